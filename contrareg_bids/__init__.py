"""ContraReg multi-modality deformable registration of neonatal brain MRI."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]

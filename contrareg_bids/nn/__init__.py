"""Torch-only building blocks of ContraReg (no Nipype, no BIDS)."""

"""What a subject-session's workflows are built from (the reference's and the subject's
inputs, known before anything runs) and the BIDS names derived from them. Plain data and
string helpers: the factories of ``workflows/`` and the derivatives sinks both read them,
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ReferenceInputs:
    """What the factory knows of the reference before anything runs."""

    image: Path  # fixed modality
    space: str  # BIDS space label, e.g. dhcpVol, sub01, custom
    cohort: int | None = None
    mask: Path | None = None
    dseg: Path | None = None
    dseg_tsv: Path | None = None
    is_template: bool = True
    description: str = ""


@dataclass
class SubjectInputs:
    subject: str
    session: str | None
    anat: dict[str, str]  # modality -> path (first run)
    moving_modality: str
    derivatives: dict[str, Path] = field(default_factory=dict)  # mask, labels
    #: post-menstrual age given on the command line (``--pma``/``--age-months``) and how;
    #: None: read from the BIDS tables for the report
    age_weeks: float | None = None
    age_source: str = ""
    #: extract the brain of the moving image (a scan with skull; ``--skull-strip``)
    skull_strip: bool = False


def source_uri(path: str | Path, bids_dir: Path | None) -> str:
    """``bids:raw:<relative path>`` for a file of the input dataset, else its path."""
    p = Path(path)
    if bids_dir is not None:
        try:
            return f"bids:raw:{p.resolve().relative_to(Path(bids_dir).resolve()).as_posix()}"
        except ValueError:
            pass
    return str(p)


def reference_label(ref: ReferenceInputs) -> str:
    """The reference as one entity label: ``dhcpVol``, or ``dhcpVolCohort40`` for a cohort.

    An image in reference space carries the cohort as its own entity
    (``space-dhcpVol_cohort-40``), but in ``to-``/``from-``/``desc-`` the reference is a label
    of another entity, and BIDS labels are alphanumeric: nibabies' ``MNIInfant+1`` is not a
    valid label, so template and cohort are joined by the word ``Cohort``. Without the
    cohort the outputs of two cohorts would share one name.
    """
    return f"{ref.space}Cohort{ref.cohort}" if ref.cohort is not None else ref.space


def spatial_reference(ref: ReferenceInputs, bids_dir: Path | None) -> str:
    """A template's TemplateFlow path (``tpl-X/...``), else a URI of the reference image."""
    parts = Path(ref.image).parts
    tpl = [i for i, part in enumerate(parts[:-1]) if part.startswith("tpl-")]  # folders
    if ref.is_template and tpl:
        return "/".join(parts[tpl[-1] :])
    return source_uri(ref.image, bids_dir)


#: How the subject's brain mask was obtained (the metrics' ``brain_mask`` column).
BRAIN_MASK_SOURCES = {
    "given": "given in a derivatives dataset (--derivatives)",
    "extracted": "extracted from the scan with skull (--skull-strip)",
    "reference": "the reference's mask carried through the affine (a skull-stripped scan)",
}


def brain_mask_source(subj: SubjectInputs) -> str:
    """Which of :data:`BRAIN_MASK_SOURCES` the anatomical workflow of ``subj`` uses (the
    rule of :func:`.anatomical.init_anat_preproc_wf`)."""
    return mask_source(subj.derivatives.get("mask"), subj.skull_strip)


def mask_source(given_mask: Path | None, skull_strip: bool) -> str:
    """:data:`BRAIN_MASK_SOURCES` key of a mask given or not, a brain extracted or not."""
    if given_mask is not None:
        return "given"
    return "extracted" if skull_strip else "reference"

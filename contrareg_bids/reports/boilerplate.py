"""The methods text and the citations of a report, with the versions of the tools used."""

from __future__ import annotations

import html
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from .. import __version__

#: Distributions named in the methods text (distribution name -> shown name).
TOOLS = {
    "nipype": "Nipype",
    "niworkflows": "NiWorkflows",
    "antspyx": "ANTsPy (antspyx)",
    "torch": "PyTorch",
    "templateflow": "TemplateFlow",
    "nibabel": "NiBabel",
    "SimpleITK": "SimpleITK",
}

CITATIONS = (
    "Dey N, Schlemper J, Salehi SSM, Zhou B, Gerig G, Sofka M. ContraReg: Contrastive "
    "Learning of Multi-modality Unsupervised Deformable Image Registration. Medical Image "
    "Computing and Computer Assisted Intervention (MICCAI) 2022.",
    "Gorgolewski K, et al. Nipype: a flexible, lightweight and extensible neuroimaging data "
    "processing framework in Python. Front Neuroinform 2011;5:13. doi:10.3389/fninf.2011.00013",
    "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image registration "
    "with cross-correlation. Med Image Anal 2008;12(1):26-41. doi:10.1016/j.media.2007.06.004",
    "Tustison NJ, et al. N4ITK: improved N3 bias correction. IEEE Trans Med Imaging "
    "2010;29(6):1310-1320. doi:10.1109/TMI.2010.2046908",
    "Ciric R, et al. TemplateFlow: FAIR-sharing of multi-scale, multi-species brain models. "
    "Nat Methods 2022;19:1568-1571. doi:10.1038/s41592-022-01681-2",
    "Paszke A, et al. PyTorch: an imperative style, high-performance deep learning library. "
    "Advances in Neural Information Processing Systems 32 (NeurIPS 2019).",
    "Heinrich MP, Papiez BW, Schnabel JA, Handels H. Towards realtime multimodal fusion for "
    "image-guided interventions using self-similarities. Medical Image Computing and "
    "Computer Assisted Intervention (MICCAI) 2013, LNCS 8149:187-194.",
)


#: The references of :data:`CITATIONS`, in the same order, as BibTeX (``CITATION.bib``).
CITATIONS_BIB = r"""@inproceedings{dey2022contrareg,
  author = {Dey, Neel and Schlemper, Jo and Salehi, Seyed Sadegh Mohseni and Zhou, Bo and
            Gerig, Guido and Sofka, Michal},
  title = {{ContraReg}: Contrastive Learning of Multi-modality Unsupervised Deformable
           Image Registration},
  booktitle = {Medical Image Computing and Computer Assisted Intervention (MICCAI)},
  year = {2022}
}

@article{gorgolewski2011nipype,
  author = {Gorgolewski, Krzysztof and others},
  title = {Nipype: a flexible, lightweight and extensible neuroimaging data processing
           framework in {Python}},
  journal = {Frontiers in Neuroinformatics}, volume = {5}, pages = {13}, year = {2011},
  doi = {10.3389/fninf.2011.00013}
}

@article{avants2008syn,
  author = {Avants, Brian B. and Epstein, Charles L. and Grossman, Murray and Gee, James C.},
  title = {Symmetric diffeomorphic image registration with cross-correlation},
  journal = {Medical Image Analysis}, volume = {12}, number = {1}, pages = {26--41},
  year = {2008}, doi = {10.1016/j.media.2007.06.004}
}

@article{tustison2010n4,
  author = {Tustison, Nicholas J. and others},
  title = {{N4ITK}: improved {N3} bias correction},
  journal = {IEEE Transactions on Medical Imaging}, volume = {29}, number = {6},
  pages = {1310--1320}, year = {2010}, doi = {10.1109/TMI.2010.2046908}
}

@article{ciric2022templateflow,
  author = {Ciric, Rastko and others},
  title = {{TemplateFlow}: {FAIR}-sharing of multi-scale, multi-species brain models},
  journal = {Nature Methods}, volume = {19}, pages = {1568--1571}, year = {2022},
  doi = {10.1038/s41592-022-01681-2}
}

@inproceedings{paszke2019pytorch,
  author = {Paszke, Adam and others},
  title = {{PyTorch}: an imperative style, high-performance deep learning library},
  booktitle = {Advances in Neural Information Processing Systems 32 (NeurIPS)},
  year = {2019}
}

@inproceedings{heinrich2013mind,
  author = {Heinrich, Mattias P. and Papie{\.z}, Bart{\l}omiej W. and Schnabel, Julia A.
            and Handels, Heinz},
  title = {Towards realtime multimodal fusion for image-guided interventions using
           self-similarities},
  booktitle = {Medical Image Computing and Computer Assisted Intervention (MICCAI)},
  series = {LNCS}, volume = {8149}, pages = {187--194}, year = {2013}
}
"""


def tool_versions() -> dict[str, str]:
    """Installed versions of the tools of :data:`TOOLS` (``"not installed"`` otherwise)."""
    out = {"contrareg-bids": __version__}
    for dist in TOOLS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def methods_text(metrics: Mapping[str, str] | None, moving: str, reference: str | None) -> str:
    """The paragraph to copy into a paper's methods (what was run, with versions), from the
    metrics row of a subject (or the run's settings): the same sentences the workflow
    factories carry as their ``__desc__`` (:func:`anat_desc`, :func:`registration_desc`)."""
    row = metrics or {}
    ref = reference or row.get("reference", "the reference")
    return methods_from_desc(
        anat_desc(moving, ref, row.get("reference_template", ""), row.get("brain_mask", ""))
        + registration_desc(
            row.get("method", "contrareg"),
            row.get("lambda", "n/a"),
            int(row.get("refine_steps") or 0),
            int(row.get("fine_steps") or 0),
        )
    )


def methods_from_desc(desc: str) -> str:
    """The methods paragraph around a workflow's description (``visit_desc()`` of the
    workflow that was built, or :func:`anat_desc` + :func:`registration_desc`): the
    framework first, the template and file libraries last, with their versions."""
    v = tool_versions()
    return (
        f"Results included in this report were generated with contrareg-bids "
        f"{v['contrareg-bids']}, built on Nipype {v['nipype']} (Gorgolewski et al. 2011) and "
        f"NiWorkflows {v['niworkflows']}.{desc} Templates were accessed with TemplateFlow "
        f"{v['templateflow']} (Ciric et al. 2022). Images were read and written with NiBabel "
        f"{v['nibabel']} and transforms with SimpleITK {v['SimpleITK']}."
    )


def anat_desc(moving: str, reference: str, reference_template: str, brain_mask: str) -> str:
    """The subject's preprocessing, as run (``init_pair_registration_wf.__desc__``)."""
    v = tool_versions()
    return (
        f" The {moving} image was corrected for intensity non-uniformity with N4 (Tustison et "
        f"al. 2010; antspyx {v['antspyx']}) and aligned to {reference}"
        f"{template_sentence(reference_template)} with an affine transform (ANTs, Mattes "
        f"mutual information).{BRAIN_MASK_TEXT.get(brain_mask, '')}"
    )


def registration_desc(method: str, lam: Any, refine_steps: int, fine_steps: int) -> str:
    """The deformable registration, as run (``init_registration_wf.__desc__``)."""
    v = tool_versions()
    if method in ("ants", "ants-syn"):
        return (
            " It was then registered deformably with ANTs SyN (Avants et al. 2008; antspyx "
            f"{v['antspyx']}, Mattes mutual information)."
        )
    lam_text = (
        "a regularisation weight chosen per subject, the smallest whose warps fold at most a "
        "set budget of voxels"
        if lam == "auto"
        else f"lambda = {lam}"
    )
    text = (
        " It was then registered deformably with ContraReg (Dey et al. 2022), a diffeomorphic "
        "network trained with a contrastive multi-scale similarity and conditioned on the "
        f"regularisation weight, at {lam_text} (PyTorch {v['torch']})"
    )
    if refine_steps:
        text += (
            f"; the network's velocity field was then optimised on each pair for "
            f"{refine_steps} steps with the model's own objective"
        )
    if fine_steps:
        text += (
            f"; finally the velocity field was optimised for {fine_steps} steps at the "
            "reference's resolution with MIND-SSC descriptors (Heinrich et al. 2013) compared "
            "in both directions and a diffusion penalty, keeping the transform diffeomorphic"
        )
    return text + "."


#: The methods text's sentence on the subject's brain mask, by the metrics' ``brain_mask``.
BRAIN_MASK_TEXT = {
    "given": " The brain mask of the subject was given with the data.",
    "extracted": (
        " The brain was extracted from the scan, which included skull and scalp, by carrying "
        "the reference's brain mask onto it with ANTs (an affine transform restricted to the "
        "head, a second one restricted to that first brain estimate, then a short SyN "
        "deformation)."
    ),
    "reference": (
        " The scan was skull-stripped; its brain mask is the reference's mask carried "
        "through the affine transform."
    ),
    # --boilerplate-only with --skull-strip auto: decided per scan when the app runs
    "auto": (
        " Where a scan included skull and scalp, the brain was extracted by carrying the "
        "reference's brain mask onto it with ANTs (affine transforms restricted to the head, "
        "then to that first brain estimate, then a short SyN deformation); otherwise the "
        "reference's mask carried through the affine transform was the brain mask."
    ),
}


def template_references(template: str) -> list[str]:
    """The template's own publications (``ReferencesAndLinks`` in the TemplateFlow cache),
    empty when there are none or the cache cannot say."""
    if not template:
        return []
    try:
        from ..io.templates import template_citation

        return list(template_citation(template)["references"])
    except Exception:
        return []


def citations_bib(template: str = "") -> str:
    """``CITATION.bib``: :data:`CITATIONS_BIB` and the template's own references (as
    ``@misc`` entries with their link: the cache holds links, not full records)."""
    extra = "".join(
        f"\n@misc{{{template.lower()}{i},\n  title = {{{template} template, reference {i}}},\n"
        f"  howpublished = {{\\url{{{ref}}}}}\n}}\n"
        for i, ref in enumerate(template_references(template), start=1)
    )
    return CITATIONS_BIB + extra


def template_sentence(template: str) -> str:
    """`` (the <Name> template; <references>)`` for a TemplateFlow reference: the
    template's own publications are cited where the reference is a template."""
    if not template:
        return ""
    try:
        from ..io.templates import template_citation

        cited = template_citation(template)
    except Exception:  # no cache, or an unreadable description: the text still stands
        return f" (TemplateFlow template {template})"
    refs = "; ".join(cited["references"])
    return f" (the {cited['name']} template{'; ' + refs if refs else ''})"


def methods_markdown(metrics: Mapping[str, str] | None, moving: str, reference: str | None) -> str:
    """``CITATION.md`` of ``--boilerplate-only``: the paragraph, the versions, the references."""
    text = methods_text(metrics, moving, reference)
    versions = "".join(f"- {TOOLS.get(k, k)} {val}\n" for k, val in tool_versions().items())
    cited = (*CITATIONS, *template_references((metrics or {}).get("reference_template", "")))
    refs = "".join(f"{i}. {c}\n" for i, c in enumerate(cited, start=1))
    return f"# Methods\n\n{text}\n\n## Software versions\n\n{versions}\n## References\n\n{refs}"


def methods_html(
    metrics: Mapping[str, str] | None, moving: str, reference: str | None, desc: str = ""
) -> str:
    """The boilerplate to copy into a paper's methods (what was run, with versions): from
    ``desc``, the description of the workflow that was built, when there is one, else from
    the metrics row."""
    text = html.escape(
        methods_from_desc(desc) if desc else methods_text(metrics, moving, reference)
    )
    v = tool_versions()
    versions = "".join(
        f"<tr><th>{html.escape(TOOLS.get(k, k))}</th><td>{html.escape(val)}</td></tr>"
        for k, val in v.items()
    )
    cited = (*CITATIONS, *template_references((metrics or {}).get("reference_template", "")))
    refs = "".join(f"<li>{html.escape(c)}</li>" for c in cited)
    return (
        f'<p class="boilerplate">{text}</p><h3>Software versions</h3><table>{versions}</table>'
        f"<h3>References</h3><ol>{refs}</ol>"
    )

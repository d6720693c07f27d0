"""``contrareg-bids`` entry point: parse, check, run the requested analysis level."""

from __future__ import annotations

import logging
import shlex
import sys

from ..io.atomic import write_text_atomic
from . import exit_codes
from .logs import setup_logging
from .parser import LEVELS, explicit_options, parse_args

LOGGER = logging.getLogger("contrareg_bids")


def write_boilerplate(cfg) -> int:
    """``--boilerplate-only``: the methods text of this configuration, then stop."""
    from ..io.templates import parse_reference
    from ..reports.boilerplate import citations_bib, methods_markdown

    spec = parse_reference(cfg.reference)
    template = spec.template if spec.kind == "template" else ""
    reg = cfg.registration
    row = {
        "method": "ants-syn" if reg.method == "ants" else "contrareg",
        "lambda": str(reg.lam),
        "refine_steps": str(reg.refine.steps),
        "fine_steps": str(reg.fine.steps),
        "reference_template": template or "",
        "brain_mask": {"force": "extracted", "skip": "reference"}.get(cfg.skull_strip, "auto"),
    }
    path = write_text_atomic(
        cfg.output_dir / "logs" / "CITATION.md",
        methods_markdown(row, cfg.moving_modality, cfg.reference),
    )
    bib = write_text_atomic(cfg.output_dir / "logs" / "CITATION.bib", citations_bib(template))
    # logging is not set up yet: say it plainly
    print(f"methods text written to {path}, its references as BibTeX to {bib}")
    return exit_codes.OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.analysis_level not in LEVELS:
        print(
            f"contrareg-bids: error: unknown analysis level {args.analysis_level!r}; "
            f"choose one of {', '.join(LEVELS)}",
            file=sys.stderr,
        )
        return exit_codes.UNKNOWN_LEVEL
    from ..config import ConfigError, RunConfig, apply_config_file

    try:
        cfg = RunConfig.from_args(args)
        cfg.command_line = shlex.join(
            ["contrareg-bids", *(sys.argv[1:] if argv is None else argv)]
        )
        if args.config_file is not None:
            cfg = apply_config_file(cfg, args.config_file, explicit_options(argv))
        if args.boilerplate_only:
            return write_boilerplate(cfg)
        if cfg.analysis_level != "group":  # the group level reads what is already there
            cfg.check_writable_dirs()
    except ConfigError as err:
        print(f"contrareg-bids: error: {err}", file=sys.stderr)
        return err.exit_code
    setup_logging(args.verbose, args.quiet)
    if cfg.analysis_level == "participant":
        from .participant import run_participant_level

        return run_participant_level(cfg)
    if cfg.analysis_level == "group":
        from .group import run_group_level

        return run_group_level(cfg)
    from .train_level import run_train_level

    return run_train_level(cfg)


if __name__ == "__main__":
    sys.exit(main())

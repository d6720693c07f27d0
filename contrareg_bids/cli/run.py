"""``contrareg-bids`` entry point (the BIDS-App levels arrive with the participant level)."""

from __future__ import annotations

import argparse
import sys

from .. import __version__


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contrareg-bids",
        description="ContraReg multi-modality (T1w <-> T2w) registration of neonatal brain MRI.",
    )
    parser.add_argument("--version", action="version", version=f"contrareg-bids {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())

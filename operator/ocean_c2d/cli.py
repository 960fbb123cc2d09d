"""The `ocean-c2d` command: one entry point, one subcommand per program the image runs.

Later issues add the operator itself and the configure, filter and publish steps as subcommands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import version

PACKAGE = "ocean-c2d"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocean-c2d", description="Ocean Protocol Compute-to-Data on Kubernetes."
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subcommands.add_parser("version", help="print the version and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"{PACKAGE} {version(PACKAGE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``interplm`` command line: one module per subcommand, each calling only ``interplm_plugins.core``.

Every subcommand module defines ``add_parser(subparsers)`` (registering itself, with
``set_defaults(run=...)``). Errors of the project's own type print one line, ``interplm: error:
<file>: <record>: <reason>``, and exit with status 2; nothing half-written is left behind because
the core writes atomically.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from interplm_plugins import __version__
from interplm_plugins.errors import InterPLMError

#: Subcommand modules, in the order ``--help`` lists them (data flows top to bottom).
SUBCOMMANDS = [
    "embed",
    "train",
    "normalize",
    "evaluate",
    "concepts",
    "build_db",
    "report",
    "describe",
    "cluster",
    "steer",
    "color",
    "export",
    "features",
    "mutate",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interplm",
        description="Sparse-autoencoder features of ESM-2 protein language models (InterPLM), from FASTA to PyMOL.",
    )
    parser.add_argument("--version", action="version", version=f"interplm-plugins {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"interplm_plugins.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"interplm_plugins.cli.{name}":
                continue  # subcommand not written yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``interplm`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from interplm_plugins.core.allocator import keep_freed_memory

    keep_freed_memory()  # batches' activations reuse freed pages instead of faulting new ones in (core/allocator.py)
    if args.quiet:
        import os

        os.environ["TQDM_DISABLE"] = "1"
    try:
        return int(args.run(args) or 0)
    except InterPLMError as err:
        print(f"interplm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interplm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

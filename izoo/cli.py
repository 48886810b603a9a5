"""``izoo`` command line: each owning module registers its own sub-commands; this file only dispatches."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from izoo import __version__
from izoo.errors import IzooError

#: modules exposing ``register(subparsers)``; each sub-parser sets ``func`` to a callable taking ``args``
COMMAND_MODULES = [
    "izoo.datasets.commands",
    "izoo.fitting.commands",
    "izoo.fitting.meta_init",
    "izoo.archive.commands",
    "izoo.reports",
    "izoo.nerf.commands",
    "izoo.benchmarks.commands",
    "izoo.interop.commands",
]


def build_parser() -> argparse.ArgumentParser:
    """The full ``izoo`` argument parser."""
    parser = argparse.ArgumentParser(prog="izoo", description=__doc__)
    parser.add_argument("--version", action="version", version=f"izoo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # that part of izoo is not installed in this build
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, turn ``IzooError`` into one line on stderr and exit status 2 (Ctrl-C: 130)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        rc = args.func(args)
    except IzooError as exc:
        print(f"izoo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # every output is written atomically, so nothing half-written is left; 130 = 128 + SIGINT
        print(f"izoo {args.command}: interrupted (Ctrl-C); finished files are kept, rerun the same command",
              file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The `imagegate` command line: one parser, sub-commands contributed by `proxy.commands.*` modules.

Each command module is imported lazily by name so that `imagegate --help` stays fast and a command
whose optional dependency is broken does not take the others down with it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Command modules, in the order their commands appear in `--help`.
COMMAND_MODULES: list[str] = [
    "proxy.commands.serve",
    "proxy.commands.audit",
    "proxy.commands.demo",
    "proxy.commands.classify",
    "proxy.commands.keys",
    "proxy.commands.provenance",
    "proxy.commands.licenses",
    "proxy.commands.prompts",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegate",
        description="Moderation and compliance proxy for image-generation APIs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""CLI sub-commands: one module per command group, each exposing `register(subparsers)`.

A module registers its argparse parser(s) and sets `func` (a callable taking the parsed
`argparse.Namespace` and returning an exit code) with `parser.set_defaults(func=...)`.
The list in `proxy.cli.COMMAND_MODULES` decides which modules are loaded.
"""

"""`corea` command line: one subcommand per module under corea_engine/commands/.

Each module exposes `register(subparsers)`; heavy imports happen inside the command so that
`corea --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ["solve", "demo", "bench", "train", "serve", "worker", "serve_llm", "eval", "calibrate"]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corea", description="COREA cascade inference engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"corea_engine.commands.{name}").register(sub)
    for command in sub.choices.values():  # so a bad flag is told with its own command's usage
        command.set_defaults(command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # exits 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .contract import UnknownFormatError
    from .models import ModelNotFoundError
    from .runtime.executor import ExecutorError, InvalidRequestError

    try:
        return args.func(args) or 0
    except (CommandError, InvalidRequestError, ExecutorError, UnknownFormatError, ModelNotFoundError,
            FileNotFoundError, TimeoutError) as err:
        print(f"corea {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # `python -m corea_engine.cli` runs this file as __main__: call the package module's main so
    # that the CommandError commands raise (imported from corea_engine.cli) is the class caught.
    from corea_engine.cli import main as package_main

    sys.exit(package_main())

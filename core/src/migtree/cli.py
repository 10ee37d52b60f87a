"""The ``migtree`` command. Errors go to stderr with exit status 1 and no
traceback unless ``--debug``; usage errors exit with 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from . import __version__, commands
from .errors import MigtreeError
from .textsafe import safe_lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migtree",
        description="Migrate VM device state between emulator builds that do not match.")
    parser.add_argument("--version", action="version", version=f"migtree {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.add_parser(sub)
    return parser


class _SafeFormatter(logging.Formatter):
    """Log lines name peers (TLS subjects, addresses) and their errors:
    escaped like every other string from outside (migtree.textsafe)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return safe_lines(super().formatMessage(record))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="migtree: %(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_SafeFormatter("migtree: %(levelname)s: %(message)s"))
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # `migtree inspect S | head`: the reader left; not an error of ours.
        # Point stdout at devnull so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except MigtreeError as e:
        if args.debug:
            raise
        print(f"migtree: error: {safe_lines(e)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"migtree: error: {e.__class__.__name__}: {safe_lines(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("migtree: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

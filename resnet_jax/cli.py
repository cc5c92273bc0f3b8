"""What every command line shares: bad input as one sentence on stderr and exit status 2, argparse that
does so for its flags, and flag types with their ranges. Holds no command's logic; imports nothing of ours.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

USAGE_EXIT = 2


def fail(message: str) -> NoReturn:
    """`error: <message>` on stderr, exit status 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(USAGE_EXIT)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad or missing flag is one sentence (naming `--help`) and exit status 2, not the
    usage block."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def loading_error(e: Exception) -> str:
    """What went wrong in a config or sweep file the user wrote: its message, with the kind of error when
    it is not a ValueError (a SyntaxError with its line)."""
    if isinstance(e, SyntaxError):
        return f"SyntaxError at line {e.lineno}: {e.msg}"
    return str(e) if isinstance(e, ValueError | FileNotFoundError) else f"{type(e).__name__}: {e}"


def integer(lo: int):
    """An argparse type: an integer of at least `lo`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, not {value}")
        return value

    parse.__name__ = "integer"
    return parse

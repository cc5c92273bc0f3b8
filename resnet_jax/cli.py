"""What every command line shares: bad input as one sentence on stderr and exit status 2, argparse that
does so for its flags, flag types with their ranges, and the one dotted-key config setter. No command's logic.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
from typing import Any, NoReturn

import ml_collections

from resnet_jax.config import ConfigError

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


def override(cfg: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Set the dotted `key` ("model.depth") of `cfg`; a string value is read as the key's declared type
    ("56" -> 56, "true" -> True, "(30,60)" -> (30, 60)). An unknown key is a ConfigError naming it."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(part, keys, n=1)
            hint = f" (did you mean {'.'.join([*parts[:i], close[0]])!r}?)" if close else ""
            raise ConfigError(f"{key!r} is not a config key{hint}; the keys are in resnet_jax/schema.py")
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    node[leaf] = parse_value(node[leaf], value, key) if isinstance(value, str) else value


def parse_value(old: Any, text: str, key: str = "") -> Any:
    """`text` read as the type of `old`, the value it replaces."""
    try:
        if isinstance(old, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(old, int | float):
            return type(old)(ast.literal_eval(text))
        if isinstance(old, tuple | list):
            value = ast.literal_eval(text)
            return tuple(value) if isinstance(value, tuple | list) else (value,)
    except (ValueError, SyntaxError, TypeError):
        raise ConfigError(
            f"config key {key!r} wants a {type(old).__name__} like {old!r}; got {text!r}"
        ) from None
    return text

"""A run's workdir files other than checkpoints: config.json, summary.json, metrics.jsonl; each written whole
and read back here, validated (a damaged file is one sentence naming it), locally or in an object store.

Light on purpose (etils only, no jax): report and sweep read runs through it without loading the trainer.
"""

from __future__ import annotations

import json
import os
import sys
import uuid

from etils import epath

from resnet_jax.config import ConfigError

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json")


def is_remote(path) -> bool:
    """A URL workdir (gs://, s3://, ...): written through etils.epath, without appends."""
    return "://" in str(path)


def write_whole(path: epath.PathLike, data: str | bytes) -> None:
    """Write `data` so that a reader (or a kill mid-write) never sees a cut file: locally to a temporary
    file of its own beside `path`, flushed to the disk, then renamed over `path`; an object store's write is
    whole already."""
    path = epath.Path(path)
    if is_remote(path):
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class DamagedFile(ConfigError):
    """A run's file that cannot be read back as what was written; the message says what to do."""


def is_run(workdir: epath.PathLike) -> bool:
    """Whether `workdir` is a run directory (the trainer wrote one of RUN_FILES there)."""
    root = epath.Path(workdir)
    return any((root / f).exists() for f in RUN_FILES)


FIXES = {
    "config.json": "put the run's config back (a config.<step>.json beside it is an earlier one) or "
    "delete it to resume without comparing configs",
    "summary.json": "delete it: rerunning the run's training command writes it again",
}


def read_json(path: epath.PathLike) -> dict | None:
    """A JSON object, or None when the file is missing; a file that is not one is a DamagedFile."""
    path = epath.Path(path)
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
        problem = None if isinstance(value, dict) else f"a JSON {type(value).__name__}, not an object"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problem = f"not JSON: {str(e).split(':')[0]}"
    if problem:
        fix = FIXES.get(path.name, "restore it from a copy or delete it")
        raise DamagedFile(f"{path} is damaged ({problem}); {fix}")
    return value


def read_config(workdir: epath.PathLike) -> dict | None:
    """The config a run wrote to <workdir>/config.json, as a dict; None when there is none."""
    return read_json(epath.Path(workdir) / "config.json")


def read_summary(workdir: epath.PathLike) -> dict | None:
    """The summary.json a run wrote when it ended; None while it has not."""
    return read_json(epath.Path(workdir) / "summary.json")


def parse_metrics(text: str, path: epath.PathLike, warn=None) -> list[dict]:
    """The records of a metrics.jsonl text. A torn last line (a run still writing, or killed mid-write) is
    dropped quietly; a malformed line elsewhere (every record is one JSON object with an integer "step")
    is dropped naming it in a warning line."""
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and isinstance(row.get("step"), int)
        except json.JSONDecodeError:
            ok = False
        if ok:
            rows.append(row)
        elif line.strip() and i < len(lines) - 1:
            warn(f"warning: {path} line {i + 1} is not a metrics record ({line[:40]!r}); dropped")
    return rows


def read_metrics(workdir: epath.PathLike, warn=None) -> list[dict]:
    """The records of <workdir>/metrics.jsonl (parse_metrics)."""
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return parse_metrics(path.read_bytes().decode(errors="replace"), path, warn)

"""A run's workdir files other than checkpoints: config.json, summary.json, metrics.jsonl; each written whole
and read back here, locally or in an object store (gs://).

Light on purpose (etils only, no jax): report and sweep read runs through it without loading the trainer.
"""

from __future__ import annotations

import json
import os

from etils import epath

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json")


def is_remote(path) -> bool:
    """A URL workdir (gs://, s3://, ...): written through etils.epath, without appends."""
    return "://" in str(path)


def write_whole(path: epath.Path, text: str) -> None:
    """Write `text` so that a reader (or a kill mid-write) never sees a cut file: locally to
    `<path>.tmp`, then renamed over `path`; an object store's write is whole already."""
    if is_remote(path):
        path.write_text(text)
        return
    tmp = epath.Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def is_run(workdir: epath.PathLike) -> bool:
    """Whether `workdir` is a run directory (the trainer wrote one of RUN_FILES there)."""
    root = epath.Path(workdir)
    return any((root / f).exists() for f in RUN_FILES)


def read_json(path: epath.PathLike) -> dict | None:
    """A JSON object, or None when the file is missing."""
    path = epath.Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def read_config(workdir: epath.PathLike) -> dict | None:
    """The config a run wrote to <workdir>/config.json, as a dict; None when there is none."""
    return read_json(epath.Path(workdir) / "config.json")


def read_summary(workdir: epath.PathLike) -> dict | None:
    """The summary.json a run wrote when it ended; None while it has not."""
    return read_json(epath.Path(workdir) / "summary.json")


def read_metrics(workdir: epath.PathLike) -> list[dict]:
    """The records of <workdir>/metrics.jsonl, skipping a torn last line of a run still writing."""
    path = epath.Path(workdir) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows

"""docs/architecture.md holds: imports point down its floors, no cycles, rooms of bounded size."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "resnet_jax"
# docs/architecture.md's floors: a module may import its own floor or a lower one, never a higher one.
FLOORS = {
    "config": 1, "schema": 1, "cli": 1, "cluster": 1, "losses": 1, "optim": 1, "workdir": 1, "paper": 1,
    "lock": 1,
    "models": 2, "data": 2, "metrics": 2, "checkpoints": 2,
    "inputs": 3, "probes": 3,
    "train": 4, "experiments": 4, "pack": 4,
    "main": 5, "sweep": 5, "report": 5, "analyze": 5, "summary": 5,
}  # fmt: skip
MAX_LINES = {"train": 550}  # every other module: 450


def room(path: pathlib.Path) -> str:
    """The room a file belongs to: its top-level module or package under resnet_jax/."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def modules() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def imported_rooms(path: pathlib.Path) -> set[str]:
    """The rooms of resnet_jax that `path` imports, at any depth (function-level imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("resnet_jax"):
            parts = node.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("resnet_jax.")}
    return out - {room(path)}


def test_every_room_has_a_floor():
    assert {room(p) for p in modules()} == set(FLOORS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_and_rooms_stay_small(path):
    here = room(path)
    up = {r for r in imported_rooms(path) if FLOORS[r] > FLOORS[here]}
    assert not up, f"{path.name} (floor {FLOORS[here]}) imports higher rooms {sorted(up)}"
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES.get(here if path.parent == PACKAGE else "", 450), f"{path.name}: {lines} lines"
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and len(doc.splitlines()) >= 2, (
        f"{path.name} needs a docstring: what it holds, what it must not"
    )


def test_no_import_cycles_between_rooms():
    graph: dict[str, set[str]] = {r: set() for r in FLOORS}
    for path in modules():
        graph[room(path)] |= imported_rooms(path)
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            assert seen.get(nxt) != 1, f"import cycle: {' -> '.join([*trail, node, nxt])}"
            if nxt not in seen:
                visit(nxt, [*trail, node])
        seen[node] = 2

    for r in sorted(graph):
        if r not in seen:
            visit(r, [])


def test_readers_and_lower_layers_never_import_the_trainer():
    for path in modules():
        if room(path) in ("models", "data", "analyze", "report", "inputs", "checkpoints", "probes"):
            assert "train" not in imported_rooms(path), f"{path.name} imports the trainer"

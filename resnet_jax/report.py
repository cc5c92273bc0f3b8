"""Tabulate and plot a sweep: results.md, results.csv, curves.png and depth.png in the sweep workdir.

    python -m resnet_jax.report runs/cifar_depth [--out=<dir>]

The workdir and --out may be local or object-store URLs (gs://), read and written through etils.epath.
Reads only files: each run directory's config.json, metrics.jsonl and summary.json (as the trainer
writes them); runs still going are reported from their last logged metrics. Runs named
<point>-seed<k> (as resnet_jax.sweep names them, packed or not) are grouped into one row per point, in
the paper's form "best (mean ± std)" over the seeds' final test errors and their number n, with the
paper's number beside ours (resnet_jax/paper.py). The plots follow the paper's Figures 1, 4 and 6:
training error dashed, test error solid, against iterations (the mean over seeds, ± std shaded), one
panel per kind of net (plain, ResNet A/B/C) and one colour per depth; and the final test error against
depth (mean ± std as error bars, the best seed marked).
"""

from __future__ import annotations

import csv
import io
import re
import statistics
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NamedTuple

from etils import epath

from resnet_jax import cli, paper
from resnet_jax import workdir as files

SEED_SUFFIX = re.compile(r"-seed(\d+)$")


class RunResult(NamedTuple):
    """One run directory's files."""

    point: str
    seed: int
    config: dict
    summary: dict
    metrics: list[dict]


def run_dirs(workdir: epath.PathLike) -> list[epath.Path]:
    """The run directories of a sweep workdir, or [workdir] when it is one run's workdir itself."""
    root = epath.Path(workdir)
    if files.is_run(root):
        return [root]
    try:
        children = [p for p in root.iterdir() if p.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted((d for d in children if files.is_run(d)), key=lambda p: p.name)


def read_runs(workdir: epath.PathLike) -> list[RunResult]:
    """Every run directory under `workdir` (one with config.json, metrics.jsonl or summary.json)."""
    runs = []
    for d in run_dirs(workdir):
        m = SEED_SUFFIX.search(d.name)
        point, seed = (d.name[: m.start()], int(m.group(1))) if m else (d.name, 0)
        config, summary = files.read_config(d) or {}, files.read_summary(d) or {}
        runs.append(RunResult(point, seed, config, summary, files.read_metrics(d)))
    return runs


def cfg(config: dict, key: str, default: object = None) -> object:
    """config["model"]["depth"] for key "model.depth" (also accepts flat dotted keys)."""
    if key in config:
        return config[key]
    node: object = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def net_of(run: RunResult) -> tuple[str, str, int, str]:
    """(dataset, kind, depth, shortcut) of a run; kind is "plain" or "ResNet (<shortcut>)"."""
    shortcut = str(cfg(run.config, "model.shortcut", "?"))
    kind = "plain" if shortcut == "none" else f"ResNet ({shortcut})"
    return str(cfg(run.config, "data.name", "?")), kind, int(cfg(run.config, "model.depth", 0)), shortcut


def evals(run: RunResult) -> list[dict]:
    """The evaluation events of a run."""
    return [r for r in run.metrics if "eval/top1_error" in r]


def last(rows: list[dict], key: str) -> float | None:
    """The last value of `key` among `rows`, or None."""
    values = [r[key] for r in rows if r.get(key) is not None]
    return values[-1] if values else None


def run_numbers(run: RunResult) -> dict[str, float | None]:
    """Final and best test error, train error, size and cost of one run (summary first, else metrics)."""
    s, ev = run.summary, evals(run)
    best = min((r["eval/top1_error"] for r in ev), default=None)
    return {
        "final_top1": s.get("final_eval_top1_error", last(ev, "eval/top1_error")),
        "best_top1": s.get("best_eval_top1_error", best),
        "final_top5": s.get("final_eval_top5_error", last(ev, "eval/top5_error")),
        "train_top1": s.get("final_train_top1_error", last(run.metrics, "train/top1_error")),
        "params": s.get("params"),
        "step": s.get("step", last(run.metrics, "step")),
        "wall_time_s": s.get("wall_time_s", last(run.metrics, "wall_time_s")),
        "device_hours": s.get("device_hours"),
    }


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the known values (std None for fewer than two)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None


def summarise(point: str, runs: list[RunResult]) -> dict:
    """One row per point: mean ± std over its seeds, the paper's numbers beside."""
    dataset, kind, depth, shortcut = net_of(runs[0])
    nums = [run_numbers(r) for r in runs]
    # data.val_split > 0: the run evaluated on images held out of the training split, not on the test set,
    # so the paper's test errors are no reference for it and the row says which set it is.
    held_out = int(cfg(runs[0].config, "data.val_split", 0) or 0)
    # The paper's bottlenecks stride on their first 1x1 (v1); a v1.5 net (stride on the 3x3) is another
    # architecture, for which the paper has no number.
    imagenet = cfg(runs[0].config, "model.family") == "imagenet"
    v15 = imagenet and depth >= 50 and cfg(runs[0].config, "model.stride_on", "1x1") == "3x3"
    # The paper's ImageNet errors are 10-crop on the validation set: a centre-crop run gets none beside it.
    crop = cfg(runs[0].config, "data.eval_crop", "center")
    ref = (
        None if held_out or v15 or (imagenet and crop != "ten") else paper.reference(dataset, depth, shortcut)
    )
    if held_out:
        eval_set = f"val ({held_out:,} held-out training images)"
    elif imagenet:
        eval_set = "validation, " + ("10-crop" if crop == "ten" else "center crop")
    else:
        eval_set = "test"
    row = {
        "point": point,
        "dataset": dataset,
        "kind": kind,
        "depth": depth,
        "arch": paper.arch_name(depth, shortcut) + ("-v1.5" if v15 else ""),
        "eval_set": eval_set,
        "runs": len(runs),
        "done": sum(bool(r.summary.get("done")) for r in runs),
        "paper_top1": ref.top1 if ref else None,
        "paper_top5": ref.top5 if ref else None,
        "paper_note": ref.note if ref else "",
        "paper_mean": ref.mean if ref else None,
        "paper_std": ref.std if ref else None,
        "paper_runs": ref.runs if ref else None,
    }
    for key in ("final_top1", "best_top1", "final_top5", "train_top1", "wall_time_s"):
        row[f"{key}_mean"], row[f"{key}_std"] = mean_std([n[key] for n in nums])
    finals = [n["final_top1"] for n in nums if n["final_top1"] is not None]
    row["n"] = len(finals)  # seeds with a final (or, still running, a last) test error
    row["min_final_top1"] = min(finals, default=None)
    row["params"] = next((n["params"] for n in nums if n["params"] is not None), None)
    row["steps"] = max((n["step"] for n in nums if n["step"] is not None), default=None)
    hours = [n["device_hours"] for n in nums if n["device_hours"] is not None]
    row["device_hours_total"] = sum(hours) if hours else None
    return row


def sort_key(run: RunResult) -> tuple[str, str, int]:
    """Dataset, then plain before ResNet, then depth."""
    dataset, kind, depth, _ = net_of(run)
    return dataset, kind.lower(), depth


def group(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    """Runs by point, points ordered by dataset, kind, depth, name; seeds in order."""
    points: dict[str, list[RunResult]] = {}
    for run in sorted(runs, key=lambda r: (*sort_key(r), r.point, r.seed)):
        points.setdefault(run.point, []).append(run)
    return points


def fmt(mean: float | None, std: float | None = None, digits: int = 2) -> str:
    """ "6.61 ± 0.16", "6.61" or "–"."""
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def best_of(best: float | None, mean: float | None, std: float | None, n: int) -> str:
    """The paper's form for n runs: "6.43 (6.61 ± 0.16)" (best, then mean ± std); one run: "6.43"."""
    if n > 1 and mean is not None:
        return f"{fmt(best)} ({fmt(mean, std)})"
    return fmt(mean if best is None else best)


def paper_cell(row: dict) -> str:
    """The paper's top-1 (best (mean ± std) for several runs) (/ top-5), with its note."""
    top1 = best_of(row["paper_top1"], row["paper_mean"], row["paper_std"], row["paper_runs"] or 1)
    text = top1 + (f" / {fmt(row['paper_top5'])}" if row["paper_top5"] is not None else "")
    return f"{text}, {row['paper_note']}" if row["paper_note"] else text


def markdown(rows: list[dict], source: epath.PathLike) -> str:
    """results.md: the table, how to read it, and the plots."""
    head = [
        "point",
        "net",
        "paper top-1 (/ top-5) %",
        "final test top-1 %: best (mean ± std)",
        "n",
        "best test top-1 %",
        "final test top-5 %",
        "final train top-1 %",
        "params",
        "steps",
        "wall time h",
        "device-h",
        "runs",
    ]
    lines = [
        f"# Results of {source}",
        "",
        "Errors in percent; final test top-1 in the paper's form, best (mean ± std) over the n seeds; "
        "the other columns mean ± std over seeds (runs = finished / all). Test error: the trainer's "
        "evaluation set (CIFAR test set, ImageNet validation set with the config's crops: the paper's "
        "numbers are 10-crop, so only 10-crop rows get one; rows marked val: the images held out of the "
        "training split by data.val_split, with no paper number beside). "
        "Device-hours: summed over seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        wall = fmt(r["wall_time_s_mean"] / 3600 if r["wall_time_s_mean"] is not None else None)
        cells = [
            r["point"],
            f"{r['dataset']} {r['arch']}"
            + (f", {r['eval_set']}" if r["eval_set"].startswith("val ") else ""),
            paper_cell(r),
            best_of(r["min_final_top1"], r["final_top1_mean"], r["final_top1_std"], r["n"]),
            str(r["n"]),
            fmt(r["best_top1_mean"], r["best_top1_std"]),
            fmt(r["final_top5_mean"], r["final_top5_std"]),
            fmt(r["train_top1_mean"], r["train_top1_std"]),
            f"{r['params']:,}" if r["params"] is not None else "–",
            str(r["steps"] or "–"),
            wall,
            fmt(r["device_hours_total"]),
            f"{r['done']}/{r['runs']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Training (dashed) and test (solid) error against iterations, mean over each point's seeds "
        "(± std shaded):",
        "",
        "![curves](curves.png)",
        "",
        "Final test error against depth, mean ± std over seeds (v: the best seed; x: the paper's number, "
        "its mean ± std in grey where it has several runs):",
        "",
        "![depth](depth.png)",
        "",
    ]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: epath.Path) -> None:
    """A CSV file with one row per dict (the first dict's keys as columns), written whole."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    files.write_whole(path, text.getvalue())


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (no display), imported only when plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: epath.Path, dpi: int = 100) -> None:
    """Render `fig` as PNG in memory and write it whole (object stores take no partial writes)."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=dpi)
    files.write_whole(path, png.getvalue())
    pyplot().close(fig)


def seed_curve(runs: list[RunResult], key: str) -> tuple[list[int], list[float], list[float]]:
    """(steps, mean, std) of `key` over the seeds at the steps where every seed that logged it has it."""
    by_seed = [{r["step"]: r[key] for r in run.metrics if r.get(key) is not None} for run in runs]
    by_seed = [d for d in by_seed if d]
    steps = sorted(set.intersection(*(set(d) for d in by_seed))) if by_seed else []
    stats = [mean_std([d[s] for d in by_seed]) for s in steps]
    return steps, [m for m, _ in stats], [sd or 0.0 for _, sd in stats]


def plot_curves(points: dict[str, list[RunResult]], path: epath.Path) -> None:
    """Figure 6 style: per kind of net, train error dashed and test error solid against iterations; a
    point of several seeds draws their mean, its test error ± std shaded."""
    plt = pyplot()
    panels: dict[str, list[list[RunResult]]] = {}
    for runs in points.values():
        dataset, kind, _, _ = net_of(runs[0])
        panels.setdefault(f"{dataset}: {kind}", []).append(runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, groups) in zip(axes[0], panels.items(), strict=True):
        for i, runs in enumerate(groups):
            color = f"C{i % 10}"
            steps, mean, _ = seed_curve(runs, "train/top1_error")
            ax.plot(steps, mean, "--", color=color, lw=1)
            steps, mean, std = seed_curve(runs, "eval/top1_error")
            label = runs[0].point + (f" (n={len(runs)})" if len(runs) > 1 else "")
            ax.plot(steps, mean, "-", color=color, lw=1.5, label=label)
            if len(runs) > 1:
                low, high = (
                    [m - s for m, s in zip(mean, std, strict=True)],
                    [m + s for m, s in zip(mean, std, strict=True)],
                )
                ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
        ax.set(title=title, xlabel="iterations", ylabel="error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_depth(rows: list[dict], path: epath.Path) -> None:
    """Final test error (mean ± std over seeds) against depth, one line per kind; v marks the best seed,
    x the paper (with its mean ± std where it has several runs)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    kinds = sorted({(r["dataset"], r["kind"]) for r in rows})
    for i, (dataset, kind) in enumerate(kinds):
        sel = sorted(
            (r for r in rows if (r["dataset"], r["kind"]) == (dataset, kind)), key=lambda r: r["depth"]
        )
        ours = [r for r in sel if r["final_top1_mean"] is not None]
        ax.errorbar(
            [r["depth"] for r in ours],
            [r["final_top1_mean"] for r in ours],
            yerr=[r["final_top1_std"] or 0.0 for r in ours],
            fmt="o-",
            color=f"C{i}",
            capsize=3,
            label=f"{dataset} {kind}",
        )
        several = [r for r in ours if r["n"] > 1]
        ax.plot(
            [r["depth"] for r in several], [r["min_final_top1"] for r in several], "v", color=f"C{i}", ms=5
        )
        ref = [r for r in sel if r["paper_top1"] is not None]
        ax.plot([r["depth"] for r in ref], [r["paper_top1"] for r in ref], "x", color=f"C{i}", ms=8)
        for r in (r for r in ref if r["paper_mean"] is not None):
            ax.errorbar([r["depth"]], [r["paper_mean"]], yerr=[r["paper_std"]], fmt="s", color="grey",
                        ms=3, capsize=3)  # fmt: skip
    depths = [r["depth"] for r in rows if r["depth"]]
    if depths and max(depths) / max(min(depths), 1) > 10:
        ax.set_xscale("log")
    ax.set(xlabel="depth (layers)", ylabel="final test error (%)", title="error against depth")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def report(workdir: epath.PathLike, out: epath.PathLike | None = None) -> list[dict]:
    """Write results.md, results.csv, curves.png, depth.png for the sweep in `workdir`; return the rows."""
    workdir = epath.Path(workdir)
    out = epath.Path(out or workdir)
    points = group(read_runs(workdir))
    if not points:
        raise FileNotFoundError(
            f"no run directories (config.json / metrics.jsonl / summary.json) in {workdir}: give a sweep "
            "workdir or one run's workdir"
        )
    rows = [summarise(point, runs) for point, runs in points.items()]
    out.mkdir(parents=True, exist_ok=True)
    files.write_whole(out / "results.md", markdown(rows, workdir))
    write_csv(rows, out / "results.csv")
    plot_curves(points, out / "curves.png")
    plot_depth(rows, out / "depth.png")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """python -m resnet_jax.report <sweep workdir, or one run's> [--out=<dir>]."""
    p = cli.Parser(prog="python -m resnet_jax.report", description=__doc__.split("\n")[0])
    p.add_argument(
        "workdir", help="the sweep workdir (or one run's), local or a URL such as gs://bucket/sweep"
    )
    p.add_argument("--out", default=None, help="output directory, local or a URL (default: the workdir)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rows = report(args.workdir, args.out)
    except (FileNotFoundError, files.DamagedFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = sum(r["done"] for r in rows)
    runs = sum(r["runs"] for r in rows)
    results = epath.Path(args.out or args.workdir) / "results.md"
    print(f"{len(rows)} points, {done}/{runs} runs finished: {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

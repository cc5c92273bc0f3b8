"""Summarise a benchmark session's results folder as Markdown (for BENCHMARKS.md); NumPy-free, no jax.

    python3 benchmarks/session_summary.py $OUT

Reads every train_step.py JSON (`*.json` with "rows"), peer_flax_imagenet.py JSON (with "peer"),
profile_step.py JSON (with "profile"), gpu_aot.py JSON (a list of rows with "thunks"), the full
training runs (`*/summary.json` and `*/metrics.jsonl`) and `skipped.txt`, and prints a table of
training steps, one of peer steps, the top ops of each profile, one of launch counts and one of runs.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def model_name(r: dict) -> str:
    if r["family"] == "cifar":
        name = f"CIFAR ResNet-{r['depth']}"
    else:
        name = f"ResNet-{r['depth']}" + (" v1.5" if r["stride_on"] == "3x3" else " v1")
    return name + (" (scan)" if r["scan_blocks"] else "")


def step_table(files: list[tuple[pathlib.Path, dict]]) -> list[str]:
    lines = [
        "| run | model | batch | dtype | data | steps/call | compile s | step ms | img/s | loop img/s "
        "| MFU (XLA) | MFU (6 x MACs) | XLA / 6 MACs |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path, d in files:
        for r in d["rows"]:
            data = r["data"] + (" + augment" if r.get("augmented") else "")
            flags = d["environment"].get("xla_flags") or ""
            run = path.stem + (f" `{flags}`" if flags else "")
            run += " `--state_layout auto`" if r.get("state_layout") == "auto" else ""
            run += " `--no_donate`" if r.get("donate") is False else ""
            run += f" (pack of {r['pack']} seeds: aggregate img/s)" if r.get("pack") else ""
            lines.append(
                f"| {run} | {model_name(r)} | {r['batch_size']} | {r['dtype']} | {data} | "
                f"{r['steps_per_call']} | {r['lower_s'] + r['compile_s']:.1f} | {r['step_ms']:.3f} | "
                f"{r['images_per_s']:,.0f} | {fmt(r.get('loop_images_per_s'), ',.0f')} | "
                f"{fmt(r.get('mfu_xla'), '.1%')} | {fmt(r.get('mfu_analytic'), '.1%')} | "
                f"{fmt(r.get('xla_over_analytic'), '.2f')} |"
            )
    return lines


def run_table(dirs: list[pathlib.Path]) -> list[str]:
    lines = [
        "| run | steps done | process wall s | summary wall s | first step s | median img/s "
        "| final test error % | best test error % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in dirs:
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
        records = []
        if (d / "metrics.jsonl").exists():
            records = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]
        rates = [r["images_per_sec"] for r in records if r.get("images_per_sec")]
        evals = [r for r in records if "eval/top1_error" in r]
        step = summary.get("step") or (records[-1]["step"] if records else None)
        final = summary.get("final_eval_top1_error") or (evals[-1]["eval/top1_error"] if evals else None)
        extra = json.loads((d / "wall.json").read_text()) if (d / "wall.json").exists() else {}
        done = "" if summary.get("done") else " (not finished)"
        lines.append(
            f"| {d.name}{done} | {fmt(step, ',')} | {fmt(extra.get('process_wall_s'), '.1f')} | "
            f"{fmt(summary.get('wall_time_s'), '.1f')} | {fmt(extra.get('first_step_s'), '.1f')} | "
            f"{fmt(statistics.median(rates) if rates else None, ',.0f')} | {fmt(final, '.2f')} | "
            f"{fmt(summary.get('best_eval_top1_error'), '.2f')} |"
        )
    return lines


def peer_table(files: list[tuple[pathlib.Path, dict]]) -> list[str]:
    lines = [
        "| run | peer | batch | dtype | device | compile s | step ms | img/s |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    for path, d in files:
        r = d["peer"]
        dtype = r["dtype"] + (" + loss scaling" if r["dynamic_scale"] else "")
        lines.append(
            f"| {path.stem} | {r['peer']} ({r.get('peer_source') or '?'}) | {r['batch_size']} | {dtype} | "
            f"{r['device_count']} x {r['device_kind']} | {r['lower_s'] + r['compile_s']:.1f} | "
            f"{r['step_ms']:.3f} | {r['images_per_s']:,.0f} |"
        )
    return lines


def profile_tables(files: list[tuple[pathlib.Path, dict]], top: int = 8) -> list[str]:
    """Per profile_step.py JSON: step time, busy fraction, kernels, categories and the top ops."""
    lines = []
    for path, d in files:
        p = d["profile"]
        cats = ", ".join(f"{c['category']} {c['share']:.0%}" for c in p["categories"] if c["ms_per_step"] > 0)
        lines += [
            f"**{path.stem}** ({d['model']}, batch {d['batch_size']}, {d['dtype']}, "
            f"{d['steps_per_call']} steps/call, {d['device_kind']}): step {d['step_ms_unprofiled']:.3f} ms "
            f"unprofiled, {d['step_ms_profiled']:.3f} ms profiled; device busy "
            f"{p['device_ms_per_step']:.3f} ms/step ({p['busy_fraction']:.0%} of the span), "
            f"{p['kernels_per_step']:.0f} kernels/step; {cats}",
            "",
            "| op | category | per step | mean µs | ms/step | share | kernel |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for op in p["ops"][:top]:
            lines.append(
                f"| {op['op']} | {op['category']} | {op['count_per_step']:.1f} | {op['mean_us']:,.1f} | "
                f"{op['ms_per_step']:.3f} | {op['share']:.1%} | {op['kernel'][:60]} |"
            )
        lines.append("")
    return lines


def aot_table(files: list[tuple[pathlib.Path, list]]) -> list[str]:
    """gpu_aot.py rows: what the compiled step launches (compile-only, or read from a real run's dump)."""
    lines = [
        "| run | module | steps/call | host-issued launches per call | per step | top level "
        "| cuDNN calls | fusions |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for path, rows in files:
        for r in rows:
            t, h = r.get("thunks") or {}, r["hlo"]
            k = r.get("steps_per_call") or max(h["while_trip_counts"] or [1])
            issued = t.get("host_issued_per_call")
            top = ", ".join(f"{n} {kind}" for kind, n in (t.get("top_level") or {}).items())
            lines.append(
                f"| {path.stem} | {r.get('module') or r.get('config', '?')} | {k} | {fmt(issued, ',')} | "
                f"{fmt(issued / k if issued else None, '.1f')} | {top or '-'} | {h['cudnn_calls']} | "
                f"{h['fusions']} |"
            )
    return lines


def e2e_table(files: list[tuple[pathlib.Path, dict]]) -> list[str]:
    """benchmarks/input_pipeline.py --e2e: the trainer's step fed by each input pipeline."""
    lines = [
        "| item | feed | model | batch | dtype | img/s (min-max) | host CPU ms/img | XLA_FLAGS |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for p, d in files:
        for r in d["e2e"]:
            lo, hi = r["images_per_s_min_max"]
            lines.append(
                f"| {p.stem} | {r['pipeline']} | {r['model']} {r['image_size']}px | {r['batch']} "
                f"| {r['dtype']} "
                f"| {r['images_per_s']:,.0f} ({lo:,.0f}-{hi:,.0f}) | {r['host_cpu_ms_per_image']:.2f} "
                f"| `{r['xla_flags'] or '(none)'}` |"
            )
    return lines


def header(files: list[tuple[pathlib.Path, dict]]) -> list[str]:
    env = files[0][1]["environment"]
    return [
        f"devices: {env['devices']}; jax {env['jax']}, flax {env['flax']}, python {env['python']}",
        f"date (UTC): {env['date_utc']}",
        "",
    ]


def main(argv: list[str]) -> None:
    out = pathlib.Path(argv[1] if len(argv) > 1 else ".")
    loaded = []
    for p in sorted(out.glob("*.json")):
        try:
            loaded.append((p, json.loads(p.read_text() or "{}")))
        except ValueError as e:
            print(f"(unreadable {p.name}: {e})")

    def holding(key: str) -> list[tuple[pathlib.Path, dict]]:
        return [(p, d) for p, d in loaded if isinstance(d, dict) and key in d]

    files = sorted(holding("rows"), key=lambda pd: pd[0].stat().st_mtime)
    aot = [
        (p, d) for p, d in loaded if isinstance(d, list) and d and isinstance(d[0], dict) and "thunks" in d[0]
    ]
    sections = [
        (files, lambda f: header(f) + step_table(f)),
        (holding("peer"), peer_table),
        (holding("profile"), profile_tables),
        (holding("e2e"), e2e_table),
        (aot, aot_table),
        (sorted(p.parent for p in out.glob("*/metrics.jsonl")), run_table),
    ]
    for inputs, make in sections:
        if not inputs:
            continue
        try:  # one malformed result costs its own table, not the others
            print("\n".join(make(inputs)) + "\n")
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            names = ", ".join(
                getattr(x[0], "name", str(x[0])) if isinstance(x, tuple) else x.name for x in inputs
            )
            print(f"(could not summarise {names}: {type(e).__name__} {e})\n")
    skipped = out / "skipped.txt"
    if skipped.exists():
        print("skipped or failed:\n" + skipped.read_text())


if __name__ == "__main__":
    main(sys.argv)

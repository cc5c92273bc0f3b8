"""What a researcher watches: metrics.jsonl, TensorBoard events, a console progress line."""

from __future__ import annotations

import json
import math
import os
import time

import jax


class MetricWriter:
    """Writes each event to `<workdir>/metrics.jsonl` and TensorBoard; only process 0 writes."""

    def __init__(self, workdir: str, enabled: bool = True) -> None:
        self.workdir = workdir
        self.enabled = enabled
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if enabled else None  # noqa: SIM115
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter  # no TensorFlow needed

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

    def truncate(self, step: int) -> None:
        """Drop records after `step`: a resumed run rewrites them exactly as they were."""
        if not self.enabled:
            return
        path = os.path.join(self.workdir, "metrics.jsonl")
        self._jsonl.close()
        with open(path) as f:
            kept = [line for line in f if line.strip() and _step_of(line) <= step]
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
        self._jsonl = open(path, "a")  # noqa: SIM115

    def write(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **record}) + "\n")
        self._jsonl.flush()
        for key, value in record.items():
            if "/" in key or key in ("lr", "images_per_sec", "epoch"):
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def console(self, line: str) -> None:
        if self.enabled:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    def summary(self, summary: dict) -> None:
        if self.enabled:
            path = os.path.join(self.workdir, "summary.json")
            with open(path + ".tmp", "w") as f:
                json.dump(summary, f, indent=2)
            os.replace(path + ".tmp", path)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


class ProgressClock:
    """Throughput, ETA and the run's cumulative wall time (kept in checkpoints across resumes)."""

    def __init__(
        self, total_steps: int, start_step: int, batch_size: int, num_devices: int, saved: dict
    ) -> None:
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.num_devices = num_devices
        self.wall_before = float(saved.get("wall_time_s", 0.0))
        self.t_process = time.perf_counter()
        self.t_last = self.t_process
        self.step_last = start_step
        self.last_train_error: float | None = None
        self.last_rate: float | None = None

    def start(self, step: int) -> None:
        """Call after the first (compiling) step: throughput is measured from here."""
        self.t_last, self.step_last = time.perf_counter(), step

    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_process

    def log(self, step: int, summed: dict, lr: float, steps_per_epoch: int) -> dict:
        now = time.perf_counter()
        steps, dt = step - self.step_last, now - self.t_last
        rate = steps * self.batch_size / dt if steps > 0 and dt > 0 else None
        self.t_last, self.step_last = now, step
        if rate is not None:
            self.last_rate = rate
        count = max(float(summed["count"]), 1.0)
        self.last_train_error = 100.0 * float(summed["top1_errors"]) / count
        record = {
            "epoch": step / steps_per_epoch,
            "train/loss": float(summed["loss"]) / count,
            "train/top1_error": self.last_train_error,
            "lr": lr,
            "images_per_sec": rate,
            "images_per_sec_per_device": rate / self.num_devices if rate else None,
            "wall_time_s": self.wall_time(),
        }
        if self.last_rate:
            record["eta_s"] = (self.total_steps - step) * self.batch_size / self.last_rate
        return record

    def progress_line(self, step: int, r: dict) -> str:
        rate = r["images_per_sec"]
        speed = f"{rate:,.0f} img/s ({rate / self.num_devices:,.0f}/device)" if rate else "-- img/s"
        eta = f"ETA {_hms(r['eta_s'])}" if "eta_s" in r else "ETA --"
        return (
            f"step {step}/{self.total_steps} epoch {r['epoch']:.2f} loss {r['train/loss']:.4f} "
            f"train error {r['train/top1_error']:.2f}% lr {r['lr']:.4g} {speed} {eta}"
        )

    def state(self, best_error: float) -> dict:
        """What a checkpoint keeps of the clock."""
        best = best_error if math.isfinite(best_error) else None
        return {"wall_time_s": self.wall_time(), "best_eval_top1_error": best}

    def summary(self) -> dict:
        wall = self.wall_time()
        return {
            "wall_time_s": wall,
            "device_hours": wall * self.num_devices / 3600.0,
            "device_kind": jax.devices()[0].device_kind,
            "num_devices": self.num_devices,
        }


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError):  # a line cut short by a kill
        return 2**62

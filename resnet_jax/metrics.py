"""What a researcher watches: metrics.jsonl, TensorBoard events, a console progress line, and the clock
(throughput, ETA, device-hours) kept across resumes. Writes only; the steps and checkpoints are not here."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import tempfile
import time

import jax
from etils import epath

from resnet_jax.workdir import is_remote, parse_metrics, write_whole


class MetricWriter:
    """Writes each event to `<workdir>/metrics.jsonl` and TensorBoard; only process 0 writes.

    Local workdirs append to metrics.jsonl. Object stores (gs://) cannot append, so there the file is
    rewritten whole at each event, and TensorBoard events are written to a local directory and copied
    into `<workdir>/tensorboard` by `sync()` (at every checkpoint) and at `close()`.
    """

    def __init__(self, workdir: str, enabled: bool = True, remote: bool | None = None) -> None:
        self.root = epath.Path(workdir)
        self.enabled = enabled
        self.remote = is_remote(workdir) if remote is None else remote
        self._path = self.root / "metrics.jsonl"
        self._jsonl = None
        self._lines: list[str] = []
        self._tb = None
        if not enabled:
            return
        if self.remote:
            self._lines = (
                self._path.read_bytes().decode(errors="replace").splitlines(keepends=True)
                if self._path.exists()
                else []
            )
            self._tb_dir = pathlib.Path(tempfile.mkdtemp(prefix="resnet_jax-tensorboard-"))
        else:
            self._jsonl = open(self._path, "a")  # noqa: SIM115
            self._tb_dir = pathlib.Path(self._path.parent, "tensorboard")
        from tensorboardX import SummaryWriter  # no TensorFlow needed

        self._tb = SummaryWriter(str(self._tb_dir), flush_secs=30)

    def truncate(self, step: int) -> None:
        """Keep the records up to `step` (a resumed run writes the later ones again, exactly as they were):
        the file is rewritten whole, without a torn last line and without malformed lines (each named in
        a warning)."""
        if not self.enabled:
            return
        text = "".join(self._lines) if self.remote else self._read_local()
        rows = parse_metrics(text, self._path)
        kept = [json.dumps(r) + "\n" for r in rows if r["step"] <= step]
        if step == 0 and rows:
            print(
                f"warning: {self._path} holds records up to step {max(r['step'] for r in rows)} but no "
                "checkpoint to resume them from: the run starts again from step 0",
                file=sys.stderr,
                flush=True,
            )
        if self.remote:
            self._lines = kept
            self._path.write_text("".join(kept))
            return
        self._jsonl.close()
        write_whole(self._path, "".join(kept))
        self._jsonl = open(self._path, "a")  # noqa: SIM115

    def _read_local(self) -> str:
        with open(self._path, "rb") as f:
            return f.read().decode(errors="replace")

    def write(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, **record}) + "\n"
        if self.remote:
            self._lines.append(line)
            self._path.write_text("".join(self._lines))
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        for key, value in record.items():
            if "/" in key or key in ("lr", "images_per_sec", "epoch"):
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def console(self, line: str) -> None:
        if self.enabled:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    def summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        write_whole(self.root / "summary.json", json.dumps(summary, indent=2))

    def discard_summary(self) -> None:
        """Remove a summary.json of an earlier end of this workdir's run, which a continuing run outdates."""
        path = self.root / "summary.json"
        if self.enabled and path.exists():
            path.unlink()

    def sync(self, flush: bool = True) -> None:
        """Copy the local TensorBoard events of a remote workdir into `<workdir>/tensorboard`."""
        if not (self.enabled and self.remote):
            return
        if flush:
            self._tb.flush()
        target = self.root / "tensorboard"
        target.mkdir(parents=True, exist_ok=True)
        for f in self._tb_dir.iterdir():
            epath.Path(f).copy(target / f.name, overwrite=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self._tb.close()
        self.sync(flush=False)
        if self._jsonl is not None:
            self._jsonl.close()


class ProgressClock:
    """Throughput, ETA and the run's cumulative wall time (kept in checkpoints across resumes)."""

    def __init__(
        self, total_steps: int, start_step: int, batch_size: int, num_devices: int, saved: dict
    ) -> None:
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.num_devices = num_devices
        self.wall_before = float(saved.get("wall_time_s", 0.0))
        # Device-seconds so far: a run resumed on another device count adds its own devices' time only.
        self.device_s_before = float(saved.get("device_seconds", self.wall_before * num_devices))
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

    def device_seconds(self) -> float:
        return self.device_s_before + (time.perf_counter() - self.t_process) * self.num_devices

    def _rate(self, step: int, now: float) -> float | None:
        steps, dt = step - self.step_last, now - self.t_last
        return steps * self.batch_size / dt if steps > 0 and dt > 0 else None

    def log(self, step: int, summed: dict, lr: float, steps_per_epoch: int) -> dict:
        now = time.perf_counter()
        rate = self._rate(step, now)
        self.t_last, self.step_last = now, step
        if rate is not None:
            self.last_rate = rate
        record = self._record(step, summed, lr, steps_per_epoch, rate, self.last_rate)
        self.last_train_error = record["train/top1_error"]
        return record

    def interim(self, step: int, summed: dict, lr: float, steps_per_epoch: int) -> dict:
        """The record `log` would make at `step` from the sums so far, changing nothing here (for console
        lines between log steps: metrics.jsonl's records, and their throughput, stay as they are)."""
        rate = self._rate(step, time.perf_counter())
        return self._record(step, summed, lr, steps_per_epoch, rate, rate or self.last_rate)

    def _record(self, step: int, summed: dict, lr: float, steps_per_epoch: int, rate, eta_rate) -> dict:
        # Averages over the examples of the applied steps; None when every step of the interval was
        # skipped (nan_policy "skip"), rather than a loss and error of 0.
        count = float(summed["count"])
        record = {
            "epoch": step / steps_per_epoch,
            "train/loss": float(summed["loss"]) / count if count > 0 else None,
            "train/top1_error": 100.0 * float(summed["top1_errors"]) / count if count > 0 else None,
            "lr": lr,
            "images_per_sec": rate,
            "images_per_sec_per_device": rate / self.num_devices if rate else None,
            "wall_time_s": self.wall_time(),
        }
        if int(summed.get("nonfinite", 0)):
            record["train/skipped_steps"] = int(summed["nonfinite"])
        if eta_rate:
            record["eta_s"] = (self.total_steps - step) * self.batch_size / eta_rate
        return record

    def progress_line(self, step: int, r: dict) -> str:
        rate = r["images_per_sec"]
        speed = f"{rate:,.0f} img/s ({rate / self.num_devices:,.0f}/device)" if rate else "-- img/s"
        eta = f"ETA {_hms(r['eta_s'])}" if "eta_s" in r else "ETA --"
        loss, error = r["train/loss"], r["train/top1_error"]
        skipped = f" ({r['train/skipped_steps']} steps skipped)" if "train/skipped_steps" in r else ""
        return (
            f"step {step}/{self.total_steps} epoch {r['epoch']:.2f} "
            + (f"loss {loss:.4f} train error {error:.2f}%" if loss is not None else "loss -- train error --")
            + f"{skipped} lr {r['lr']:.4g} {speed} {eta}"
        )

    def state(self, best_error: float) -> dict:
        """What a checkpoint keeps of the clock."""
        best = best_error if math.isfinite(best_error) else None
        return {
            "wall_time_s": self.wall_time(),
            "device_seconds": self.device_seconds(),
            "best_eval_top1_error": best,
        }

    def summary(self) -> dict:
        return {
            "wall_time_s": self.wall_time(),
            "device_hours": self.device_seconds() / 3600.0,
            "device_kind": jax.devices()[0].device_kind,
            "num_devices": self.num_devices,
        }


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"

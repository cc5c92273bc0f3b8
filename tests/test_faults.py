"""Fault injection through the command line: each fault is done to a `python -m resnet_jax.main` run (or its
workdir), then the same command is rerun. Every test asserts the exit code, what was printed (one error
sentence or one warning line per handled fault, never a traceback or a library's log line) and, for the
faults a rerun recovers from, a final state and metrics bit-identical to the uninterrupted run.

Slow: each test starts two to four trainer processes (about 10-20 s each here with the shared persistent
compilation cache of conftest.py); the whole file takes a few minutes.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT, checkpoint_steps, popen_as_in_a_terminal, tiny_config, trainer_command
from test_reliability import assert_same_run, deterministic_metrics

from resnet_jax import train

pytestmark = pytest.mark.slow  # trainer processes: minutes for the file

STEPS = 24  # test_reliability's run (its assert_same_run compares checkpoint 24)
OVERRIDES = dict(num_train_steps=STEPS, checkpoint_every_steps=2, log_every_steps=2, eval_every_steps=8)
NOISE = re.compile(r"Traceback|^[EWF]\d{4} |^WARNING:|^ERROR:", re.M)  # tracebacks, absl/orbax log lines


def command(workdir, *extra) -> list[str]:
    return trainer_command(workdir, OVERRIDES, *extra)


def start(workdir, *extra, shell: str = "", env=None) -> subprocess.Popen:
    """The trainer, under `shell` commands run first (e.g. a ulimit) when given."""
    cmd = command(workdir, *extra)
    if shell:
        cmd = ["bash", "-c", f'{shell}; exec "$@"', "bash", *cmd]
    return popen_as_in_a_terminal(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def run(workdir, *extra, shell: str = "", env=None) -> tuple[int, str]:
    proc = start(workdir, *extra, shell=shell, env=env)
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def warnings(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("warning:")]


def errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


def assert_quiet(out: str) -> None:
    """No traceback and no library log line: every handled fault is one line of ours."""
    assert not NOISE.search(out), out[-4000:]


def assert_one_sentence(rc: int, out: str, expected_rc: int, *fragments: str) -> None:
    """Exit `expected_rc` with exactly one error line, holding `fragments`, and nothing noisy."""
    assert rc == expected_rc, out[-4000:]
    assert_quiet(out)
    (line,) = errors(out)
    for fragment in fragments:
        assert fragment in line, line


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc is None or proc.poll() is None, "the run ended before the fault could be injected"
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def settled(workdir) -> bool:
    """A complete checkpoint and no write in flight (no orbax temporary directory)."""
    d = pathlib.Path(workdir, "checkpoints")
    return bool(checkpoint_steps(workdir)) and not [p for p in d.iterdir() if "tmp" in p.name]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run (in this process: main.py only parses flags and calls train_and_evaluate)."""
    workdir = tmp_path_factory.mktemp("straight")
    train.train_and_evaluate(tiny_config(**OVERRIDES), str(workdir))
    return workdir


def finish_and_compare(straight, workdir, warned: int = 0, *expected: str) -> str:
    """Rerun the command to the end: exit 0, `warned` warning lines (holding `expected`), no noise, and
    the uninterrupted run's result to the bit."""
    rc, out = run(workdir)
    assert rc == 0, out[-4000:]
    assert_quiet(out)
    lines = warnings(out)
    assert len(lines) == warned, lines
    for fragment in expected:
        assert any(fragment in line for line in lines), (fragment, lines)
    assert_same_run(straight, workdir)
    return out


# ---------------------------------------------------------------------------------------------
# Kills and signals.


def test_kill_9_before_the_first_checkpoint_during_a_write_and_after_an_evaluation(straight, tmp_path):
    """kill -9 at three points: while compiling (nothing saved yet), as the first checkpoint appears (often
    mid-write), and after the evaluation at step 8; each rerun takes over the dead run's lock with one
    warning and the last rerun ends where the uninterrupted run does."""
    proc = start(tmp_path)
    wait_for(lambda: (tmp_path / "metrics.jsonl").exists() or (tmp_path / "config.json").exists(), proc)
    proc.kill()
    proc.wait()
    assert not checkpoint_steps(tmp_path)
    proc = start(tmp_path)
    wait_for(lambda: (tmp_path / "checkpoints").exists() and any((tmp_path / "checkpoints").iterdir()), proc)
    proc.kill()
    out, _ = proc.communicate()
    assert "taking over" in out and len(warnings(out)) <= 2, out  # (a second one: metrics past no checkpoint)
    proc = start(tmp_path)
    wait_for(lambda: 8 in checkpoint_steps(tmp_path), proc)
    proc.kill()
    proc.wait()
    finish_and_compare(straight, tmp_path, 1, "taking over", "ended without releasing it")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_checkpoint_exit_0_and_the_rerun_is_bit_identical(straight, tmp_path, sig):
    for _ in range(3):
        proc = start(tmp_path)
        wait_for(lambda: settled(tmp_path), proc)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=300)
        if "preempted at step" in out:
            break
        shutil.rmtree(tmp_path)  # it finished before the signal arrived: start over
        tmp_path.mkdir()
    assert proc.returncode == 0 and "preempted at step" in out, out[-3000:]
    assert_quiet(out)
    step = int(out.split("preempted at step ")[1].split(";")[0])
    assert f"resuming from step {step}" in finish_and_compare(straight, tmp_path)  # released: no warning


def test_two_starts_at_once_one_runs_the_other_is_refused_naming_it(straight, tmp_path):
    a, b = start(tmp_path), start(tmp_path)
    (out_a, _), (out_b, _) = a.communicate(timeout=600), b.communicate(timeout=600)
    results = sorted([(a.returncode, out_a, a.pid), (b.returncode, out_b, b.pid)], key=lambda r: r[0])
    (rc_ok, out_ok, pid_ok), (rc_refused, out_refused, _) = results
    assert rc_ok == 0, out_ok[-3000:]
    assert_one_sentence(rc_refused, out_refused, 2, "is in use by another run", f"pid {pid_ok}", "started")
    assert "resuming" not in out_ok
    assert_same_run(straight, tmp_path)


def test_a_second_start_while_one_runs_is_refused_and_a_later_rerun_resumes(straight, tmp_path):
    first = start(tmp_path)
    wait_for(lambda: settled(tmp_path), first)
    rc, out = run(tmp_path)
    assert_one_sentence(rc, out, 2, "is in use by another run", f"pid {first.pid}")
    first.kill()
    first.wait()
    finish_and_compare(straight, tmp_path, 1, "taking over")


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints.


def flip_a_byte(workdir, step: int) -> None:
    """Flip one bit in the middle of the largest array data file of checkpoint `step`: the file keeps its
    size and its format (its chunks are stored uncompressed), only one array's values change."""
    files = [f for f in pathlib.Path(workdir, "checkpoints", str(step), "state").rglob("d/*") if f.is_file()]
    target = max(files, key=lambda f: f.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x40
    target.write_bytes(bytes(data))


def train_to(workdir, steps: int) -> None:
    """The run cut short: `steps` steps of it (the run's length may change on resume)."""
    rc, out = run(workdir, f"--config.num_train_steps={steps}", f"--config.eval_every_steps={min(steps, 8)}")
    assert rc == 0, out[-3000:]


def truncate_data(workdir, step: int) -> None:
    """Cut checkpoint `step`'s array data (the OCDBT root manifest and data files) to half, leaving its JSON
    metadata whole: orbax reads the arrays before it finds out (with every file cut, helpers'
    damage_checkpoint, it fails early on the JSON)."""
    state = pathlib.Path(workdir, "checkpoints", str(step), "state")
    for f in [state / "manifest.ocdbt", *(state / "d").iterdir()]:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def test_a_truncated_checkpoint_falls_back_in_one_warning(straight, tmp_path):
    """Was: 62 tracebacks (tensorstore's callbacks into orbax's closed event loop), exit 0."""
    train_to(tmp_path, 8)
    truncate_data(tmp_path, 8)
    out = finish_and_compare(straight, tmp_path, 1, "checkpoints/8 is unreadable", "trying the previous one")
    assert "resuming from step 6" in out


def test_a_byte_flipped_checkpoint_is_caught_by_its_checksums(straight, tmp_path):
    train_to(tmp_path, 8)
    flip_a_byte(tmp_path, 8)
    out = finish_and_compare(straight, tmp_path, 1, "checkpoints/8 is damaged (the checksum of")
    assert "resuming from step 6" in out
    assert list((tmp_path / "checkpoints").glob("8.damaged-*"))  # set aside for inspection


def test_an_edited_clock_is_caught_by_its_seal(straight, tmp_path):
    """A checkpoint's clock (the metric sums, the best error, the checksums) edited into other valid JSON."""
    train_to(tmp_path, 8)
    path = tmp_path / "checkpoints" / "8" / "clock" / "metadata"
    clock = json.loads(path.read_text())
    clock["best_eval_top1_error"] = 0.0
    path.write_text(json.dumps(clock))
    finish_and_compare(straight, tmp_path, 1, "checkpoints/8 is damaged (its clock does not match")


def test_checkpoints_removed_mid_run_are_written_again(straight, tmp_path):
    """The checkpoints/ directory deleted between two checkpoints of a running run: the state is in memory,
    the next checkpoint recreates it, and the run ends as the uninterrupted one."""
    proc = start(tmp_path)
    wait_for(lambda: settled(tmp_path), proc)
    proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: settled(tmp_path))
        shutil.rmtree(tmp_path / "checkpoints")
    finally:
        proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert_quiet(out)
    assert_same_run(straight, tmp_path)


def test_a_full_disk_is_one_sentence_and_the_rerun_recovers(straight, tmp_path):
    """Files may not grow past 64 KiB (RLIMIT_FSIZE: writes fail with EFBIG, as on a full disk): config.json
    and the metrics fit, a checkpoint's array data does not."""

    # Without the persistent compilation cache, whose entries would not fit either (jax warns of each).
    no_cache = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
    rc, out = run(tmp_path, shell="ulimit -f 64", env=no_cache)  # 64 blocks of 1 KiB
    assert_one_sentence(rc, out, 1, "writing checkpoint", "free disk space or fix permissions")
    finish_and_compare(straight, tmp_path, 1, "no checkpoint to resume them from")


# ---------------------------------------------------------------------------------------------
# Damaged run files.


def test_a_damaged_config_json_is_one_sentence_naming_it(straight, tmp_path):
    train_to(tmp_path, 8)
    whole = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(whole[: len(whole) // 2])
    rc, out = run(tmp_path)
    assert_one_sentence(rc, out, 2, f"{tmp_path / 'config.json'} is damaged", "put the run's config back")
    (tmp_path / "config.json").write_text(whole)  # what the sentence says to do
    finish_and_compare(straight, tmp_path)


def test_a_malformed_metrics_line_is_named_and_the_file_rewritten(straight, tmp_path):
    """A malformed line in the middle of metrics.jsonl (not a torn last line): one warning naming it; the
    file is rewritten whole without it, and every other record is the uninterrupted run's."""
    train_to(tmp_path, 8)
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lost = json.loads(lines[1])
    lines[1] = "{not json\n"
    path.write_text("".join(lines))
    rc, out = run(tmp_path)
    assert rc == 0, out[-3000:]
    assert_quiet(out)
    (line,) = warnings(out)
    assert f"{path} line 2 is not a metrics record" in line
    assert "{not json" not in path.read_text()
    expected = [r for r in deterministic_metrics(straight) if r != {k: lost[k] for k in r if k in lost}]
    assert deterministic_metrics(tmp_path) == expected


def test_a_changed_computation_is_refused_deny_by_default(tmp_path):
    """A key that the old list of compared keys missed (BN momentum, the streamed shuffle buffer, the
    warm-up) changes the run: refused naming it; a key that cannot change the computation resumes, and
    allow_config_change keeps the old config as config.<step>.json."""
    train_to(tmp_path, 4)
    rc, out = run(tmp_path, "--config.model.bn_momentum=0.8", "--config.data.shuffle_buffer=8")
    assert_one_sentence(rc, out, 2, "different config (model.bn_momentum, data.shuffle_buffer)")
    original = json.loads((tmp_path / "config.json").read_text())
    rc, out = run(tmp_path, "--config.model.bn_momentum=0.8", "--config.allow_config_change=True")
    assert rc == 0, out[-3000:]
    assert json.loads((tmp_path / "config.4.json").read_text()) == original
    assert json.loads((tmp_path / "config.json").read_text())["model"]["bn_momentum"] == 0.8


def test_a_damaged_summary_json_is_one_sentence_in_report(tmp_path):
    run_dir = tmp_path / "sweep" / "plain20"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(tiny_config().to_json())
    (run_dir / "summary.json").write_text('{"done": tru')
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_jax.report", str(tmp_path / "sweep")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert_quiet(proc.stderr)
    assert proc.stderr.strip() == (
        f"error: {run_dir / 'summary.json'} is damaged (not JSON: Expecting value); delete it: rerunning the "
        "run's training command writes it again"
    )


def test_a_damaged_image_folder_cache_is_rebuilt_with_one_warning(tmp_path):
    """The decoded-array cache of an image folder, one byte flipped (zip's CRC catches it): one warning,
    the images decoded again, and the run the same as the one that wrote the cache."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("test", 16)):
        for c in ("cat", "dog"):
            (tmp_path / "folder" / split / c).mkdir(parents=True)
            for i in range(n // 2):
                image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(image).save(tmp_path / "folder" / split / c / f"{i}.png")
    data = [
        "--config.data.name=image_folder",
        f"--config.data.path={tmp_path / 'folder'}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.data.eval_batch_size=16",
        "--config.num_train_steps=4",
        "--config.eval_every_steps=4",
    ]
    rc, out = run(tmp_path / "a", *data)
    assert rc == 0, out[-3000:]
    (cache,) = (tmp_path / "cache").glob("*.npz")
    blob = bytearray(cache.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    cache.write_bytes(bytes(blob))
    rc, out = run(tmp_path / "b", *data)
    assert rc == 0, out[-3000:]
    assert_quiet(out)
    (line,) = warnings(out)
    assert f"the cache {cache} is damaged" in line and "decoding the images again" in line
    assert cache.exists() and os.path.getsize(cache) == len(blob)  # written again, whole
    from helpers import assert_trees_equal, restore_state

    assert_trees_equal(restore_state(tmp_path / "a", 4), restore_state(tmp_path / "b", 4))

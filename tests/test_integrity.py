"""The pieces behind "nothing lost, nothing wrong accepted silently", in this process: the workdir lock
(local and gs://), checkpoint checksums, the deny-by-default resume rule, whole writes and validated reads.

tests/test_faults.py drives the same through the command line.
"""

from __future__ import annotations

import json
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import checkpoints, cli, config, lock, schema, workdir

# ---------------------------------------------------------------------------------------------
# The lock.


def race(workdir: str, n: int = 4) -> tuple[list[lock.RunLock], list[Exception]]:
    """`n` starts taking the lock of `workdir` at the same moment (threads released by one barrier)."""
    barrier = threading.Barrier(n)
    won, lost = [], []

    def one() -> None:
        held = lock.RunLock(workdir, warn=lambda line: None)
        barrier.wait()
        try:
            held.acquire()
            won.append(held)
        except lock.WorkdirInUse as e:
            lost.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, lost


def test_a_local_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    first = lock.RunLock(str(tmp_path))
    first.acquire()
    with pytest.raises(
        lock.WorkdirInUse, match=rf"in use by another run \(host .*, pid {os.getpid()}, started"
    ):
        lock.RunLock(str(tmp_path)).acquire()
    first.release()
    assert (tmp_path / "run.lock").read_text() == ""  # released: an empty file, never deleted
    again = lock.RunLock(str(tmp_path), warn=pytest.fail)  # a released lock is taken without a warning
    again.acquire()
    again.release()


def test_a_local_lock_left_by_a_dead_run_is_taken_over_with_one_warning(tmp_path):
    (tmp_path / "run.lock").write_text(json.dumps({"host": "h", "pid": 999999, "started": 0, "token": "x"}))
    said = []
    held = lock.RunLock(str(tmp_path), warn=said.append)
    held.acquire()  # the record is there, but no process holds the file lock: its holder is gone
    held.release()
    assert len(said) == 1 and "taking over" in said[0] and "pid 999999" in said[0]


def test_starts_racing_for_a_local_lock_never_both_win(tmp_path):
    for _ in range(5):
        won, lost = race(str(tmp_path))
        assert len(won) == 1 and len(lost) == 3
        won[0].release()


def test_a_gs_lock_refuses_takes_over_a_stale_one_and_races_to_one_winner(gs_bucket, monkeypatch):
    """gs:// has no file locks: a record with a heartbeat, read back after SETTLE_S."""
    monkeypatch.setattr(lock, "SETTLE_S", 0.3)
    first = lock.RunLock("gs://b/run")
    first.acquire()
    with pytest.raises(lock.WorkdirInUse, match=r"in use by another run \(host .*, alive \d+ s ago\)"):
        lock.RunLock("gs://b/run").acquire()
    first.release()
    stored = gs_bucket / "b" / "run" / "run.lock"
    assert stored.read_text() == ""
    stale = {"host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time() - lock.STALE_S - 1}
    stored.write_text(json.dumps(stale))
    said = []
    held = lock.RunLock("gs://b/run", warn=said.append)
    held.acquire()
    held.release()
    assert len(said) == 1 and "host elsewhere" in said[0] and "no heartbeat" in said[0]
    won, lost = race("gs://b/run")
    assert len(won) == 1 and len(lost) == 3
    won[0].release()


def test_a_gs_lock_beats_while_held(gs_bucket, monkeypatch):
    monkeypatch.setattr(lock, "SETTLE_S", 0.0)
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    held = lock.RunLock("gs://b/run")
    held.acquire()
    first = json.loads((gs_bucket / "b" / "run" / "run.lock").read_text())["heartbeat"]
    time.sleep(0.5)
    assert json.loads((gs_bucket / "b" / "run" / "run.lock").read_text())["heartbeat"] > first
    held.release()


# ---------------------------------------------------------------------------------------------
# Checksums.


def test_checksums_see_one_flipped_bit_and_a_swap_whatever_the_sharding():
    x = np.random.default_rng(0).standard_normal((64, 33)).astype(np.float32)
    base = checkpoints.checksums({"x": x})
    flipped = x.copy()
    flipped.view(np.uint32)[17, 5] ^= 1 << 30
    swapped = x.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert checkpoints.checksums({"x": flipped}) != base
    assert checkpoints.checksums({"x": swapped}) != base
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    for spec in (P(), P("data")):  # replicated (the train state) and sharded: the same sums
        assert checkpoints.checksums({"x": jax.device_put(x, NamedSharding(mesh, spec))}) == base
    small = {
        "b": jnp.ones(3, jnp.bfloat16),
        "i": jnp.arange(4, dtype=jnp.int8),
        "m": jnp.array([True, False]),
    }
    assert set(checkpoints.checksums(small)) == {"b", "i", "m"}


def test_a_sealed_clock_verifies_and_any_change_is_damage():
    state = {"w": np.arange(6, dtype=np.float32)}
    sealed = checkpoints.seal({"wall_time_s": 1.5, "best_eval_top1_error": None}, state)
    assert checkpoints.verify(state, json.loads(json.dumps(sealed))) == {
        "wall_time_s": 1.5,
        "best_eval_top1_error": None,
    }
    with pytest.raises(checkpoints.Damaged, match="checksum of w"):
        checkpoints.verify({"w": state["w"] + 1}, sealed)
    with pytest.raises(checkpoints.Damaged, match="clock does not match"):
        checkpoints.verify(state, {**sealed, "wall_time_s": 2.5})
    assert checkpoints.verify(state, {"wall_time_s": 1.0}) == {"wall_time_s": 1.0}  # written before checksums


# ---------------------------------------------------------------------------------------------
# Resume: deny by default.


def other_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, tuple):
        return (*value, (value[-1] if value else 0) + 1)
    return f"{value}x"


def test_every_key_but_the_documented_ones_is_refused_on_resume():
    """Each schema key changed alone: refused naming it, unless it is in MAY_CHANGE (then it resumes)."""
    old = json.loads(tiny_config().to_json())
    for key, declared in schema.keys().items():
        cfg = tiny_config()
        node = cfg
        for part in key.split("."):
            node = node[part]
        cli.override(cfg, key, other_value(node))
        if key in config.MAY_CHANGE:
            config.check_resume_config(cfg, old, "w")
        else:
            with pytest.raises(config.ConfigError, match=rf"different config \({key}\)"):
                config.check_resume_config(cfg, old, "w")
        assert declared.doc  # (every key is declared)
    assert set(config.MAY_CHANGE) <= set(schema.keys())


def test_the_run_length_of_a_cosine_schedule_may_not_change():
    old = json.loads(tiny_config(**{"schedule.name": "cosine"}).to_json())
    with pytest.raises(config.ConfigError, match=r"\(num_train_steps\)"):
        config.check_resume_config(tiny_config(**{"schedule.name": "cosine", "num_train_steps": 8}), old, "w")


def test_a_key_the_old_config_lacks_must_keep_its_default():
    old = json.loads(tiny_config().to_json())
    del old["model"]["bn_epsilon"]
    config.check_resume_config(tiny_config(), old, "w")
    with pytest.raises(config.ConfigError, match=r"\(model.bn_epsilon\)"):
        config.check_resume_config(tiny_config(**{"model.bn_epsilon": 1e-3}), old, "w")


def test_a_changed_config_is_kept_as_config_step_json(tmp_path):
    checkpoints.write_config(tiny_config(), str(tmp_path))
    checkpoints.write_config(tiny_config(), str(tmp_path), 4)  # the same: nothing kept
    assert not list(tmp_path.glob("config.*.json"))
    checkpoints.write_config(tiny_config(num_train_steps=8), str(tmp_path), 4)
    assert json.loads((tmp_path / "config.4.json").read_text())["num_train_steps"] == 4
    checkpoints.write_config(tiny_config(num_train_steps=12), str(tmp_path), 4)  # the first one stays
    assert json.loads((tmp_path / "config.4.json").read_text())["num_train_steps"] == 4
    assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 12


# ---------------------------------------------------------------------------------------------
# Whole writes, validated reads.


def test_a_write_cut_by_a_kill_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    workdir.write_whole(path, '{"done": false}')

    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        workdir.write_whole(path, '{"done": true}')
    assert path.read_text() == '{"done": false}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [(b'{"done": tr', "not JSON"), (b"[1, 2]", "a JSON list, not an object"), (b"\xff\xfe{", "not JSON")],
)
def test_a_damaged_run_file_is_one_sentence_naming_it(tmp_path, text, problem):
    (tmp_path / "config.json").write_bytes(text)
    with pytest.raises(workdir.DamagedFile) as e:
        workdir.read_config(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'config.json'} is damaged ({problem}") and "\n" not in message
    assert "config.<step>.json" in message


def test_metrics_records_a_torn_last_line_quietly_and_names_others():
    said = []
    text = '{"step": 2}\n{"step": oops\n42\n{"no_step": 1}\n{"step": 4}\n{"step": 6, "tr'
    rows = workdir.parse_metrics(text, "m.jsonl", said.append)
    assert [r["step"] for r in rows] == [2, 4]
    assert [s.split(" is ")[0] for s in said] == [
        "warning: m.jsonl line 2",
        "warning: m.jsonl line 3",
        "warning: m.jsonl line 4",
    ]

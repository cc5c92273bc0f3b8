"""First contact: the README's commands on a machine without the dataset and without internet stop at once
with one sentence naming --config.data.path, and Ctrl-C during set-up (e.g. a hung download) stops at once.

No test here can reach a real download: every subprocess gets an empty TFDS directory and an HTTP(S) proxy
on this machine, which either refuses connections (offline) or accepts them and never answers (a hung
download); TFDS's downloader (requests) and the project's reachability probe both go through it.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers import ROOT, popen_as_in_a_terminal

from resnet_jax.data import tfds_meta

OFFLINE_LIMIT_S = 60  # the bound; TFDS's own retries take ~206 s, imports ~10 s on 2 busy cores


def readme_command(marker: str) -> list[str]:
    """The README's command on the line ending in `# <marker>`, as written."""
    text = (ROOT / "README.md").read_text()
    line = next(ln for ln in text.splitlines() if re.search(rf"#\s*{marker}\s*$", ln))
    return shlex.split(line.split("#")[0])


def docs_command(page: str, needle: str) -> list[str]:
    """The (backslash-continued) command of docs/<page> that contains `needle`, without its comment."""
    text = (ROOT / "docs" / page).read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if needle in ln)
    return shlex.split(line.split("#")[0])


def refusing_port() -> tuple[socket.socket, int]:
    """A bound, not listening, socket: connecting to its port is refused (as offline as it gets)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def offline_env(tmp_path, proxy_port: int) -> dict[str, str]:
    proxy = f"http://127.0.0.1:{proxy_port}"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    env.update(
        TFDS_DATA_DIR=str(tmp_path / "tfds"), http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy,
        HTTPS_PROXY=proxy, PYTHONPATH=str(ROOT),
    )  # fmt: skip
    return env


def as_python(cmd: list[str]) -> list[str]:
    assert cmd[:2] == ["python", "-m"], cmd
    return [sys.executable, *cmd[1:]]


def with_workdir(cmd: list[str], workdir) -> list[str]:
    return [f"--workdir={workdir}" if a.startswith("--workdir=") else a for a in cmd]


def assert_offline_sentence(proc: subprocess.CompletedProcess, seconds: float) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "--config.data.path" in lines[0] and "cannot be reached" in lines[0], lines[0]
    assert seconds < OFFLINE_LIMIT_S, f"took {seconds:.0f} s"


def run_offline(cmd: list[str], tmp_path) -> None:
    """`cmd` with every connection refused: it must stop soon in one sentence naming data.path."""
    sock, port = refusing_port()
    with sock:
        t0 = time.monotonic()
        proc = subprocess.run(
            cmd, cwd=ROOT, env=offline_env(tmp_path, port), capture_output=True, text=True, timeout=300
        )
    assert_offline_sentence(proc, time.monotonic() - t0)


def test_the_readme_train_command_offline_stops_at_once_naming_data_path(tmp_path):
    cmd = with_workdir(as_python(readme_command("train")), tmp_path / "run")
    assert "--config=configs/cifar10.py:resnet20" in cmd and not any("data.path" in a for a in cmd)
    run_offline(cmd, tmp_path)
    assert not (tmp_path / "run" / "config.json").exists()  # nothing started
    assert not list((tmp_path / "tfds").rglob("*.tmp.*"))  # no download began


def test_the_documented_analyze_gradients_example_offline_stops_at_once(tmp_path):
    cmd = as_python(docs_command("experiments.md", "analyze gradients --config="))
    cmd = [f"--out={tmp_path / 'grads'}" if a.startswith("--out=") else a for a in cmd]
    run_offline(cmd, tmp_path)
    assert not (tmp_path / "grads").exists()


class HangingProxy:
    """A proxy that accepts every connection and never answers; `connected` is set once a client asks it
    to CONNECT (the download itself: the reachability probe connects and hangs up without a word)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connected = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        try:
            if conn.recv(1024).startswith(b"CONNECT"):
                self.connected.set()
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()
        for c in self.held:
            c.close()


@pytest.mark.parametrize("command", ["train", "analyze"])
def test_ctrl_c_during_a_hung_download_stops_at_once_without_a_traceback(tmp_path, command):
    if command == "train":
        cmd = with_workdir(as_python(readme_command("train")), tmp_path / "run")
    else:
        cmd = as_python(docs_command("experiments.md", "analyze gradients --config="))
        cmd = [f"--out={tmp_path / 'grads'}" if a.startswith("--out=") else a for a in cmd]
    proxy = HangingProxy()
    proc = popen_as_in_a_terminal(
        cmd, cwd=ROOT, env=offline_env(tmp_path, proxy.port), stderr=subprocess.PIPE, text=True
    )
    try:
        assert proxy.connected.wait(120), "the download never started"
        time.sleep(0.5)  # the main thread is now waiting on the download's thread
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)  # before: the download's thread kept the process for minutes
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.close()
    stderr = proc.stderr.read()
    assert proc.returncode == -signal.SIGINT, stderr  # killed by SIGINT: shell status 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert seconds < 5, f"took {seconds:.1f} s to stop"


def test_the_probe_gives_up_on_a_host_that_hangs_within_its_timeout(monkeypatch):
    """Name resolution has no timeout of its own: a resolver that hangs must not hang the probe."""
    real = socket.create_connection

    def connect(address, *args, **kwargs):
        if address[0] != "hangs":
            return real(address, *args, **kwargs)
        time.sleep(30)  # then fail as a resolver that gave up would (the thread outlives this test)
        raise OSError("name resolution timed out")

    monkeypatch.setattr(socket, "create_connection", connect)
    server = socket.create_server(("127.0.0.1", 0))
    sock, refused = refusing_port()
    with server, sock:
        up = ("127.0.0.1", server.getsockname()[1])
        t0 = time.monotonic()
        down = tfds_meta.unreachable({("hangs", 443), ("127.0.0.1", refused), up}, timeout=1.0)
        seconds = time.monotonic() - t0
    assert down == [f"127.0.0.1:{refused}", "hangs:443"]
    assert seconds < 1.0 + 0.5  # the timeout, plus thread start-up on a busy machine


def test_a_proxy_is_probed_in_place_of_the_host_it_serves(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("no_proxy", "local.example")
    assert tfds_meta._endpoint("https://www.cs.toronto.edu/x.tgz") == ("proxy.example", 3128)
    assert tfds_meta._endpoint("https://local.example/x.tgz") == ("local.example", 443)
    assert tfds_meta._endpoint("ftp://files.example/x") is None

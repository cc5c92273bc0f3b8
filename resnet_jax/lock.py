"""One run per workdir: `<workdir>/run.lock`, held for a run's life, names its holder (host, pid, start
time); a second start is refused naming it, and a lock whose holder is gone is taken over with a warning.

Files only (etils, no jax): which process of a multi-host run holds it (process 0) is the trainer's choice.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
import uuid

from etils import epath

from resnet_jax.config import ConfigError
from resnet_jax.workdir import is_remote, write_whole

LOCK_NAME = "run.lock"
# Object stores have no file locks: the holder rewrites its heartbeat every HEARTBEAT_S seconds (a thread
# of its own, so a long compilation or evaluation cannot starve it), and a lock whose heartbeat is older
# than STALE_S is a dead run's. A writer reads its lock back SETTLE_S after writing it: of two starts
# racing, the one whose write came last wins, the other sees the winner's and stops.
HEARTBEAT_S = 60.0
STALE_S = 600.0
SETTLE_S = 2.0


class WorkdirInUse(ConfigError):
    """Another run holds the workdir."""


def describe(holder: dict) -> str:
    """'host h, pid 12, started 2026-12-03 12:00:00' for a lock's record."""
    started = holder.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, int | float)
        else "?"
    )
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {when}"


def _record(token: str, started: float) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": started,
        "heartbeat": time.time(),
        "token": token,
    }


def _parse(text: str) -> dict | None:
    """The holder a lock file names; None for an empty (released) or unreadable one."""
    try:
        holder = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


class RunLock:
    """`<workdir>/run.lock`. Local workdirs use an advisory file lock (flock): the kernel releases it when
    the process dies, whatever kills it, so a holder that is gone is never mistaken for a live one, and two
    starts racing for it cannot both win. The file is never deleted (a start waiting on the old file and one
    creating a new one could then both hold one); a released lock is an empty file. Object stores (gs://)
    use the heartbeat record described at HEARTBEAT_S."""

    def __init__(self, workdir: str, warn=print) -> None:
        self.path = epath.Path(workdir) / LOCK_NAME
        self.remote = is_remote(workdir)
        self.warn = warn
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._file = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def busy(self, holder: dict | None, ago: str = "") -> WorkdirInUse:
        who = describe(holder) if holder else "a run that is starting"
        return WorkdirInUse(
            f"{self.path.parent} is in use by another run ({who}{ago}): wait for it to end or use another "
            f"--workdir (if that run is gone, delete {self.path})"
        )

    def acquire(self) -> None:
        """Take the lock or raise WorkdirInUse naming its holder; a lock left by a run that is gone is taken
        over with one warning line."""
        if self.remote:
            self._acquire_remote()
            return
        import fcntl

        f = open(self.path, "a+")  # noqa: SIM115 - held open for the run's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES):  # no file locks here (some network file systems)
                self.remote = True
                self._acquire_remote()
                return
            raise self.busy(self._read_settled()) from None
        f.seek(0)
        left = _parse(f.read())
        if left is not None:  # not released: its holder died (the kernel let go of its lock)
            self.warn(
                f"warning: taking over {self.path} from a run that ended without releasing it "
                f"({describe(left)})"
            )
        f.seek(0)
        f.truncate()
        f.write(json.dumps(_record(self.token, self.started)))
        f.flush()
        os.fsync(f.fileno())
        self._file = f

    def _read_settled(self) -> dict | None:
        """The holder a locked file names; it writes its record just after locking, so wait a moment."""
        for _ in range(20):
            holder = _parse(self.path.read_text())
            if holder is not None:
                return holder
            time.sleep(0.05)
        return None

    def _read_remote(self) -> dict | None:
        return _parse(self.path.read_text()) if self.path.exists() else None

    def _acquire_remote(self) -> None:
        held = self._read_remote()
        if held is not None:
            age = time.time() - float(held.get("heartbeat", 0))
            if age < STALE_S:
                raise self.busy(held, f", alive {age:.0f} s ago")
            self.warn(
                f"warning: taking over {self.path} from a run that is gone ({describe(held)}; no heartbeat "
                f"for {age:.0f} s, more than {STALE_S:.0f} s)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(_record(self.token, self.started)))
        time.sleep(SETTLE_S)
        back = self._read_remote()
        if not back or back.get("token") != self.token:
            raise self.busy(back)
        self._thread = threading.Thread(target=self._beat, name="run.lock heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is retried; STALE_S allows many
                held = self._read_remote()
                if held and held.get("token") != self.token:
                    self.warn(f"warning: another run took over {self.path} ({describe(held)})")
                    return
                self.path.write_text(json.dumps(_record(self.token, self.started)))

    def release(self) -> None:
        """Let go: an empty file locally, the record removed from an object store."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.seek(0)
                self._file.truncate()
                self._file.flush()
            self._file.close()  # closing releases the flock
            self._file = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
            with contextlib.suppress(Exception):
                if (self._read_remote() or {}).get("token") == self.token:
                    write_whole(self.path, "")

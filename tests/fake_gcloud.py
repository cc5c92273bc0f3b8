"""A stand-in for gcloud in the launcher tests: checks each call's syntax, logs it, acts out a TPU's life.

State lives in $FAKE_DIR: `calls` (one line per call), `state` (the queued resource's state, absent when
there is none). A training ssh runs $FAKE_DIR/worker.sh <worker> <run>, run = how many times that worker has
been started; the stop ssh (kill) creates $FAKE_DIR/stopped.
"""

import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import gcloud_syntax  # noqa: E402

argv = sys.argv[1:]
fake = pathlib.Path(os.environ["FAKE_DIR"])
with open(fake / "calls", "a") as f:
    f.write(" ".join(argv) + "\n")
problems = gcloud_syntax.errors(argv)
if problems:
    print("fake gcloud: " + "; ".join(problems), file=sys.stderr)
    sys.exit(2)
state = fake / "state"
command = " ".join(a for a in argv if not a.startswith("-"))
flags = dict(a.split("=", 1) if "=" in a else (a, "") for a in argv if a.startswith("--"))
if command.startswith("compute tpus queued-resources describe"):
    if not state.exists():
        print("ERROR: (gcloud.compute.tpus.queued-resources.describe) NOT_FOUND", file=sys.stderr)
        sys.exit(1)
    print(state.read_text().strip())
elif command.startswith("compute tpus queued-resources create"):
    state.write_text("ACTIVE\n")
elif command.startswith("compute tpus queued-resources delete"):
    state.unlink(missing_ok=True)
elif command.startswith("compute tpus tpu-vm describe"):
    print(os.environ.get("FAKE_WORKERS", "2"))
elif command.startswith("compute tpus tpu-vm ssh") and flags.get("--command", "").startswith("cd "):
    worker = flags["--worker"]
    run = sum(1 for c in (fake / "calls").read_text().splitlines() if f"--worker={worker} --command=cd" in c)
    sys.exit(subprocess.run(["bash", str(fake / "worker.sh"), worker, str(run)]).returncode)
elif command.startswith("compute tpus tpu-vm ssh") and "kill" in flags.get("--command", ""):
    (fake / "stopped").touch()

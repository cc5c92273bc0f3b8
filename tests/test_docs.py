"""Every snippet of README.md and docs/*.md runs as written: the ```python blocks of a page in one process,
each command of the ```bash and indented blocks by the first rule of COMMANDS that matches it.

A command that would train for hours, needs a cluster, the network or files only a user has is run in a
form the rule derives from it (the trainer's flags parsed and checked by its own parser, a sweep printed
instead of run), or not run, with the reason and the test that covers it instead. A command no rule
matches fails the test: a new snippet must be classified. docs/launch.md's commands are
tests/test_launch.py's (run against stand-ins of gcloud, kubectl, sbatch and docker).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from helpers import CIFAR_TAR, ROOT
from test_bad_inputs import reset_flags

from resnet_jax import config, sweep
from resnet_jax import main as trainer

PAGES = [
    "README.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md") if p.name != "launch.md"),
]
PLACEHOLDER = re.compile(r"<\w|\[--|=\.\.\.|\.\.\.\]")  # a synopsis: <dir>, [--flag], --config=...
# The README's train command's workdir: snippets that read "a run" read this one, trained (shortened) here.
README_RUN = "runs/cifar10-resnet20"


def blocks(page: str) -> list[tuple[str, str]]:
    """(language, text) of the page's fenced blocks, and its indented blocks as "indented"."""
    text = (ROOT / page).read_text()
    fenced = re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
    unfenced = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    indented = [
        ("indented", re.sub(r"^    ", "", b, flags=re.M))
        for b in re.findall(r"\n\n((?:    .*\n)+)", unfenced)
    ]
    return fenced + indented


def commands(page: str) -> list[str]:
    """The command lines of a page's shell blocks (continuations joined, comments and output dropped)."""
    out = []
    for lang, text in blocks(page):
        if lang not in ("bash", "indented"):
            continue
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


# (pattern, action, reason): actions "run" (as written), "dry" (derived, the reason says how), "skip".
TRAINER_DRY = "flags, config file and overrides parsed by the trainer's parser, checked by config.check"
COMMANDS = [
    (PLACEHOLDER, "skip", "a synopsis with placeholders, not a command"),
    (r"^--config\.", "skip", "flags to add to a command, not a command"),
    (r"^pip install", "skip", "installs packages from the network"),
    (r"^python -m pytest", "skip", "the test suite itself"),
    (r"^tfds build imagenet2012", "skip", "needs ImageNet's archives; test_data_imagenet builds a TFDS set"),
    (r"folder_tfds\.build\('photos'", "skip", "needs the user's photos/; conftest.py's tiny_tfds builds one"),
    (r"^python -m resnet_jax\.analyze", "skip",
     "reads trained sweeps, or CIFAR-10 through TFDS (a download): test_analyze.py, test_first_contact.py"),
    (r"^python -m resnet_jax\.report runs/cifar10-resnet20", "run", "on the README run trained here"),
    (r"^python -m resnet_jax\.report", "skip", "reads a finished sweep: test_report.py, test_sweep_e2e.py"),
    (r"^python -m resnet_jax\.sweep", "dry", "in --mode=print unless a mode is given; every point checked"),
    (r"^python -m resnet_jax\.main .*cifar\d+\.py:[\w,]*smoke", "run", "a CIFAR smoke run: seconds"),
    (r"^python -m resnet_jax\.main", "dry", "hours of training: " + TRAINER_DRY),
    (r"^python -m resnet_jax\.(summary|schema)", "run", "prints a table"),
    (r"^python -c ", "run", "as written"),
]  # fmt: skip


def rule(command: str) -> tuple[str, str]:
    for pattern, action, reason in COMMANDS:
        if re.search(pattern, command):
            return action, reason
    raise AssertionError(f"no rule for the documented command {command!r}: add one to COMMANDS")


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> str:
    """The README's train command, shortened to 2 steps of batch 16 on the CIFAR-10 archive (200 images
    held out, so its evaluation is short): a real run's workdir for the snippets that read one."""
    workdir = tmp_path_factory.mktemp("readme") / "cifar10-resnet20"
    line = next(c for c in commands("README.md") if c.startswith("python -m resnet_jax.main"))
    argv = [a for a in shlex.split(line)[3:] if not a.startswith("--workdir=")]
    short = ["--config.num_train_steps=2", "--config.batch_size=16", f"--config.data.path={CIFAR_TAR}",
             "--config.data.val_split=200", "--config.log_every_steps=1", "--config.eval_every_steps=2",
             "--config.checkpoint_every_steps=2"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_jax.main", *argv, f"--workdir={workdir}", *short],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(workdir)


def shell(command: str, tmp_path, readme_run: str) -> subprocess.CompletedProcess:
    command = command.replace(README_RUN, readme_run).replace("/tmp/smoke", str(tmp_path / "smoke"))
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def dry_run_trainer(argv: list[str]) -> None:
    """The trainer's command line parsed by its own parser (config file, argument, overrides), the config
    checked as far as it can be without devices and data: what fails here would fail at the start."""
    reset_flags()
    saved, sys.argv = sys.argv, ["main", *argv]
    try:
        trainer.parse_flags(["main", *argv])  # exits 2 with one sentence on bad input
        config.check(flags.FLAGS.config, 1)
    finally:
        sys.argv = saved


@pytest.mark.parametrize("page", [p for p in PAGES if commands(p)])
def test_every_command_of_the_page_runs(page, tmp_path, request):
    for command in commands(page):
        action, reason = rule(command)
        if action == "skip":
            continue
        argv = shlex.split(command)
        if action == "dry" and argv[2] == "resnet_jax.main":
            dry_run_trainer(argv[3:])
        elif argv[2:3] == ["resnet_jax.sweep"]:  # in this process: gs:// is a local directory here
            if "gs://" in command:
                request.getfixturevalue("gs_bucket")
            mode = [] if any(a.startswith("--mode") for a in argv) else ["--mode=print"]
            assert sweep.main(argv[3:] + mode) == 0, command
        else:
            run = request.getfixturevalue("readme_run") if README_RUN in command else ""
            proc = shell(command, tmp_path, run)
            assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-3000:])


@pytest.mark.parametrize("page", [p for p in PAGES if any(lang == "python" for lang, _ in blocks(p))])
def test_the_python_blocks_of_the_page_run_in_one_process(page, request):
    """A page's python blocks run in order in one process, as a reader pastes them; blocks that need what
    only a user has are replaced by the test that covers them (NOT_RUN)."""
    code = []
    for lang, text in blocks(page):
        if lang != "python":
            continue
        reason = next((why for needle, why in NOT_RUN.items() if needle in text), None)
        if reason is None:
            code.append(text)
    source = "\n".join(code)
    if README_RUN in source:
        source = source.replace(README_RUN, request.getfixturevalue("readme_run"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", source], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


NOT_RUN = {  # a block containing the key is not run, for the reason given
    "torchvision.models.resnet50(weights=": "downloads torchvision's weights; test_torch_weights.py converts "
    "torchvision's ResNets (random weights) and compares logits",
    "streamed.eval_iterator(cfg": "needs ImageNet prepared; test_data_imagenet.py streams a TFDS JPEG set",
}

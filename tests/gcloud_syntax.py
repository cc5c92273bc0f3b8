"""The gcloud commands the launchers and docs use, with the flags current gcloud (GA) accepts for each.

From the gcloud reference (cloud.google.com/sdk/gcloud/reference/...): compute tpus queued-resources
create/describe/delete/list, compute tpus tpu-vm ssh/scp/describe, and the set-up commands of
docs/launch.md. Only GA flags: e.g. `--best-effort` exists only in `gcloud alpha`, and `--version` is the
flag of `tpu-vm create`, not of `queued-resources create` (which takes `--runtime-version`).
"""

from __future__ import annotations

import shlex

GLOBAL = {"--project", "--format", "--quiet", "--verbosity", "--account", "--configuration", "--help"}
# command words -> (flags it accepts, flags it requires, number of positional arguments)
COMMANDS: dict[tuple[str, ...], tuple[set[str], set[str], int]] = {
    ("compute", "tpus", "queued-resources", "create"): (
        {
            "--zone",
            "--runtime-version",
            "--accelerator-type",
            "--topology",
            "--type",
            "--node-id",
            "--node-count",
            "--node-prefix",
            "--spot",
            "--reserved",
            "--guaranteed",
            "--async",
            "--boot-disk",
            "--data-disk",
            "--description",
            "--internal-ips",
            "--labels",
            "--metadata",
            "--metadata-from-file",
            "--network",
            "--range",
            "--scopes",
            "--service-account",
            "--shielded-secure-boot",
            "--subnetwork",
            "--tags",
            "--valid-after-duration",
            "--valid-after-time",
            "--valid-until-duration",
            "--valid-until-time",
        },
        {"--zone", "--runtime-version"},
        1,
    ),  # fmt: skip
    ("compute", "tpus", "queued-resources", "describe"): ({"--zone"}, {"--zone"}, 1),
    ("compute", "tpus", "queued-resources", "delete"): ({"--zone", "--async", "--force"}, {"--zone"}, 1),
    ("compute", "tpus", "queued-resources", "list"): (
        {"--zone", "--filter", "--limit", "--page-size", "--sort-by", "--uri"},
        {"--zone"},
        0,
    ),
    ("compute", "tpus", "tpu-vm", "ssh"): (
        {
            "--zone",
            "--worker",
            "--command",
            "--strict-host-key-checking",
            "--internal-ip",
            "--ssh-flag",
            "--ssh-key-expire-after",
            "--tunnel-through-iap",
            "--batch-size",
            "--dry-run",
            "--plain",
        },
        {"--zone"},
        1,
    ),  # fmt: skip
    ("compute", "tpus", "tpu-vm", "scp"): (
        {
            "--zone",
            "--worker",
            "--recurse",
            "--compress",
            "--scp-flag",
            "--strict-host-key-checking",
            "--internal-ip",
            "--tunnel-through-iap",
            "--batch-size",
            "--dry-run",
            "--plain",
        },
        {"--zone"},
        2,
    ),  # fmt: skip
    ("compute", "tpus", "tpu-vm", "describe"): ({"--zone"}, {"--zone"}, 1),
    ("auth", "login"): (set(), set(), 0),
    ("auth", "configure-docker"): (set(), set(), 1),
    ("config", "set"): (set(), set(), 2),
    ("services", "enable"): ({"--async"}, set(), 1),
    ("storage", "buckets", "create"): ({"--location", "--default-storage-class"}, set(), 1),
    ("container", "clusters", "create-auto"): ({"--location", "--region", "--release-channel"}, set(), 1),
    ("container", "clusters", "get-credentials"): ({"--location", "--region", "--zone"}, set(), 1),
    ("artifacts", "repositories", "create"): (
        {"--repository-format", "--location", "--description"},
        {"--repository-format", "--location"},
        1,
    ),
}
EXCLUSIVE = [{"--node-id", "--node-count"}, {"--spot", "--reserved", "--guaranteed"}]
TOGETHER = [{"--node-count", "--node-prefix"}]


def errors(argv: list[str]) -> list[str]:
    """What is wrong with `gcloud <argv>` for current gcloud (empty: nothing)."""
    words = [a for a in argv if not a.startswith("-")]
    command = next((c for c in sorted(COMMANDS, key=len, reverse=True) if tuple(words[: len(c)]) == c), None)
    if command is None:
        return [f"not a gcloud command these launchers use: gcloud {' '.join(argv)}"]
    accepted, required, positional = COMMANDS[command]
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    found = []
    if len(words) - len(command) != positional:
        found.append(
            f"{' '.join(command)} takes {positional} positional argument(s): {words[len(command) :]}"
        )
    found += [f"{' '.join(command)} has no flag {f}" for f in sorted(flags - accepted - GLOBAL)]
    found += [f"{' '.join(command)} needs {f}" for f in sorted(required - flags)]
    if command[-2:] == ("queued-resources", "create"):
        if not flags & {"--accelerator-type", "--type"}:
            found.append("queued-resources create needs --accelerator-type")
        if not flags & {"--node-id", "--node-count"}:
            found.append("queued-resources create needs --node-id or --node-count with --node-prefix")
        found += [f"only one of {sorted(group)}" for group in EXCLUSIVE if len(flags & group) > 1]
        found += [f"{sorted(group)} go together" for group in TOGETHER if 0 < len(flags & group) < len(group)]
    return found


def line_errors(line: str) -> list[str]:
    """errors() of a printed command line (`gcloud ...`, possibly followed by a redirection)."""
    argv = shlex.split(line)
    end = next((i for i, a in enumerate(argv) if a in {">", "&", "|", ">>"}), len(argv))
    assert argv[0] == "gcloud", line
    return errors(argv[1:end])

"""Multiply-adds counted on the real modules match the paper's Table 1 and CIFAR figures; the summary CLI."""

import json
import pathlib
import subprocess
import sys

import pytest

from resnet_jax import models, summary
from resnet_jax.models.flops import count_macs, macs_by_stage

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (family, depth, shortcut, stride_on) -> reference multiply-adds per image (paper.md).
MACS = {
    ("imagenet", 18, "B", "1x1"): 1.8141e9,
    ("imagenet", 34, "B", "1x1"): 3.6638e9,
    ("imagenet", 50, "B", "1x1"): 3.8580e9,
    ("imagenet", 101, "B", "1x1"): 7.5702e9,
    ("imagenet", 152, "B", "1x1"): 11.2824e9,
    ("imagenet", 50, "B", "3x3"): 4.0892e9,
    ("cifar", 20, "A", "1x1"): 40.55e6,
    ("cifar", 56, "A", "1x1"): 125.49e6,
    ("cifar", 110, "A", "1x1"): 252.89e6,
}


@pytest.mark.parametrize("family,depth,shortcut,stride_on", list(MACS))
def test_multiply_adds_match_the_reference(family, depth, shortcut, stride_on):
    cifar = family == "cifar"
    model = models.create(family, depth, shortcut, 10 if cifar else 1000, stride_on=stride_on)
    macs = count_macs(model, 32 if cifar else 224)
    # MACS holds reference counts rounded to 4 or 5 significant digits (40.55e6: up to 1.2e-4 relative);
    # rel 1e-3 is 8x that rounding, far below one layer's share; the exact CIFAR formula is asserted below
    assert macs == pytest.approx(MACS[family, depth, shortcut, stride_on], rel=1e-3)
    if cifar:  # the exact formula: conv1 + fc, plus 6n - 1 full-size 3x3 convs
        assert macs == 443_008 + 2_359_296 * (depth - 3)


def test_stages_add_up_and_scan_does_not_change_the_count():
    model = models.create("cifar", 20, "A", scan_blocks=True, remat=True)
    stages = macs_by_stage(model, 32)
    assert list(stages) == ["conv1", "conv2_x", "conv3_x", "conv4_x", "fc"]
    assert stages["conv1"] == 32 * 32 * 27 * 16 and stages["fc"] == 640
    assert sum(stages.values()) == count_macs(models.create("cifar", 20, "A"), 32) == 40_551_040


def test_channel_padded_stem_does_not_change_the_count():
    """The padded stem is the same convolution: its multiply-adds still count (benchmarks' MFU)."""
    model = models.create("imagenet", 50, "B", 1000, stride_on="3x3", stem_channels=4)
    assert count_macs(model, 224) == 4_089_184_256


def test_option_b_counts_its_projections():
    a, b = (count_macs(models.create("cifar", 20, s), 32) for s in "AB")
    assert b - a == 16 * 16 * 16 * 32 + 8 * 8 * 32 * 64


def test_cli_prints_the_table(capsys):
    assert summary.main(["--family=cifar", "--depth=110", "--shortcut=A"]) == 0
    out = capsys.readouterr().out
    assert "ResNet-110 (cifar, shortcut A), 32x32 input, 10 classes" in out
    assert "conv2_x  32x32        18      [3x3, 16] x2" in out
    assert "conv1    32x32        1       3x3, 16                      464        442,368" in out
    assert "1,727,962" in out and "252,887,680" in out
    assert "1.73 M params, 252.89 M multiply-adds per image" in out


def test_cli_json(capsys):
    argv = ["--family=imagenet", "--depth=50", "--shortcut=B", "--stride_on=3x3", "--num_classes=10"]
    argv.append("--json")
    assert summary.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 25_557_032 - 2048 * 990 - 990
    assert result["macs"] == 4_089_184_256 - 2048 * 990
    names = [s["name"] for s in result["stages"]]
    assert names == ["conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x", "fc"]
    assert result["stages"][2]["filters"] == "[1x1, 128; 3x3, 128; 1x1, 512]"
    assert result["stages"][4]["output_size"] == [7, 7]
    assert sum(s["params"] for s in result["stages"]) == result["params"]
    assert sum(s["macs"] for s in result["stages"]) == result["macs"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--depth=21"], "error: CIFAR depth must be 6n+2 (20, 32, 44, 56, 110, 1202, ...); got 21\n"),
        (["--family=imagenet", "--depth=50", "--stride_on=2x2"], "error: stride_on must be '1x1'"),
        (["--image_size=-1"], "error: num_classes and image_size must be positive; got 10 and -1\n"),
    ],
)
def test_cli_invalid_model_exits_2_with_one_sentence(capsys, argv, message):
    assert summary.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err and captured.out == ""


def test_module_entry_point_exits_2_without_traceback():
    cmd = [sys.executable, "-m", "resnet_jax.summary", "--family=imagenet", "--depth=42"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr == "error: ImageNet depth must be one of 18, 34, 50, 101, 152; got 42\n"

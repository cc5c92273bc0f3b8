"""The paper's reference numbers (He et al. 2015, arXiv 1512.03385), as in shared/paper.md.

Keys are (dataset, arch) with `arch` as written by `arch_name`: "resnet110-A", "plain34".
Errors are percent: CIFAR test error; ImageNet 10-crop validation top-1 / top-5 (Tables 2, 3).
"""

from __future__ import annotations

from typing import NamedTuple


class Reference(NamedTuple):
    """One published result: top-1 (and top-5) error in percent, and what the number means; for a result of
    several runs, top-1 is the best and `mean`, `std`, `runs` the rest of the paper's "best (mean ± std)"."""

    top1: float | None
    top5: float | None = None
    note: str = ""
    mean: float | None = None
    std: float | None = None
    runs: int = 1


def arch_name(depth: int, shortcut: str) -> str:
    """ "plain<depth>" for shortcut "none", else "resnet<depth>-<shortcut>"."""
    return f"plain{depth}" if shortcut == "none" else f"resnet{depth}-{shortcut}"


CIFAR10 = "cifar10"
IMAGENET = "imagenet2012"

REFERENCES: dict[tuple[str, str], Reference] = {
    # CIFAR-10, Table 6 (option A), test error of one run except where noted.
    (CIFAR10, "resnet20-A"): Reference(8.75),
    (CIFAR10, "resnet32-A"): Reference(7.51),
    (CIFAR10, "resnet44-A"): Reference(7.17),
    (CIFAR10, "resnet56-A"): Reference(6.97),
    (CIFAR10, "resnet110-A"): Reference(6.43, note="best of 5", mean=6.61, std=0.16, runs=5),
    (CIFAR10, "resnet1202-A"): Reference(7.93, note="training error < 0.1%: overfitting"),
    (CIFAR10, "plain110"): Reference(None, note="> 60 (Fig. 6, not plotted)"),
    # ImageNet, 10-crop validation error, Tables 2 and 3.
    (IMAGENET, "plain18"): Reference(27.94),
    (IMAGENET, "resnet18-A"): Reference(27.88),
    (IMAGENET, "plain34"): Reference(28.54, 10.02),
    (IMAGENET, "resnet34-A"): Reference(25.03, 7.76),
    (IMAGENET, "resnet34-B"): Reference(24.52, 7.46),
    (IMAGENET, "resnet34-C"): Reference(24.19, 7.40),
    (IMAGENET, "resnet50-B"): Reference(22.85, 6.71),
    (IMAGENET, "resnet101-B"): Reference(21.75, 6.05),
    (IMAGENET, "resnet152-B"): Reference(21.43, 5.71),
}

# Exact parameter counts (BN and FC included): CIFAR option A, ImageNet option B.
PARAMS: dict[tuple[str, str], int] = {
    ("cifar", "resnet20-A"): 269_722,
    ("cifar", "resnet32-A"): 464_154,
    ("cifar", "resnet44-A"): 658_586,
    ("cifar", "resnet56-A"): 853_018,
    ("cifar", "resnet110-A"): 1_727_962,
    ("cifar", "resnet1202-A"): 19_421_274,
    ("imagenet", "resnet18-B"): 11_689_512,
    ("imagenet", "resnet34-B"): 21_797_672,
    ("imagenet", "resnet50-B"): 25_557_032,
    ("imagenet", "resnet101-B"): 44_549_160,
    ("imagenet", "resnet152-B"): 60_192_808,
}


def reference(dataset: str, depth: int, shortcut: str) -> Reference | None:
    """The paper's result for this dataset and net, or None where the paper gives none."""
    return REFERENCES.get((dataset, arch_name(depth, shortcut)))

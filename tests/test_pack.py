"""Seeds side by side in one program (pack.py): seed s of a pack is seed s alone, and every fault a single run
survives, a pack survives seed by seed."""

import functools

import jax
import numpy as np
import pytest
from helpers import CIFAR_TAR, tiny_config
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import pack, train

STEPS = 3
# data.mean="channel": inputs of unit scale (with "pixel", synthetic std 1, they are +-127). 16 px: the
# program is the same as at 32 px, at a quarter of the cost.
SMALL = {"data.mean": "channel", "data.image_size": 16}
BN_MODES = {
    "global": {},
    "per_device": {"model.bn": "per_device"},
    "ghost": {"model.bn": "ghost", "model.bn_group_size": 2},
}
REAL = {"data.name": "cifar10", "data.path": str(CIFAR_TAR), "data.val_split": 200, "data.image_size": 32}
# Tolerance, relative. vmap turns every convolution with per-seed weights into one grouped convolution
# (and its gradients into grouped ones over the batch), which XLA reduces in another order; nothing else
# changes. Reordering a float32 sum of n terms moves it by at most (n - 1) u relative to the sum of their
# magnitudes (u = 2^-24); the longest reductions of the step run over batch x height x width = 16 x 32 x
# 32 = 16,384 terms: 16,384 u ~ 1e-3. That bounds what the forward pass computes: the loss of every step
# (a function of the parameters the previous steps made) and the BN statistics of every layer. Gradients
# are not continuous (ReLU's derivative jumps where a pre-activation lies within rounding of 0: a flipped
# term moved a momentum trace by 4.5e-3 of its largest element at the third step, and did the same for
# that seed alone on 1 device instead of 8), so parameters are checked through the losses they give. A
# wrong seed, data order, augmentation key or BN statistics shared between seeds moves them by >= 1e-2.
RTOL = 16_384 * 2.0**-24


def cfg_of(seed: int = 0, num_seeds: int = 1, **overrides):
    return tiny_config(seed=seed, num_seeds=num_seeds, **{**SMALL, **overrides})


@functools.cache
def alone(seed: int, mode: str, real: bool) -> tuple[dict, list[float]]:
    """Seed `seed` trained alone for STEPS steps: (state on the host, loss sums per step)."""
    run = train.setup(cfg_of(seed, **BN_MODES[mode], **(REAL if real else {})))
    state, batches, losses = run.init(), run.batches(0), []
    for _ in range(STEPS):
        state, metrics = run.update(state, next(batches))
        losses.append(float(metrics["loss"]))
    return jax.device_get(state), losses


def assert_same_run(packed: train.TrainState, losses: list, single: train.TrainState, single_losses: list):
    """Integer leaves (step, RNG key, optimizer counts) equal; losses and BN statistics within RTOL."""
    for a, b in zip(jax.tree.leaves(packed), jax.tree.leaves(single), strict=True):
        if not np.issubdtype(np.asarray(b).dtype, np.floating):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(losses, single_losses, rtol=RTOL)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(packed.batch_stats),
        jax.tree.leaves(single.batch_stats),
        strict=True,
    ):
        assert float(np.abs(a - b).max()) <= RTOL * float(np.abs(b).max()), jax.tree_util.keystr(path)


@pytest.mark.parametrize(
    "k,mode,real",
    [(2, "global", False), (3, "global", False), (2, "per_device", False), (3, "per_device", False),
     (2, "ghost", False), (3, "ghost", False), (2, "global", True)],
)  # fmt: skip
def test_each_seed_of_a_pack_is_the_seed_alone(k, mode, real):
    """Seed s of a pack of K (seeds 1..K: its own init, synthetic images or augmentation keys, data order
    and BN statistics) over STEPS steps is seed s trained alone, within the reordering bound."""
    p = pack.setup(cfg_of(1, k, **BN_MODES[mode], **(REAL if real else {})))
    assert p.seeds == list(range(1, k + 1))
    assert dict(p.mesh.shape) == {2: {"pack": 2, "data": 4}, 3: {"pack": 3, "data": 1}}[k]
    state, batches, losses = p.init(), p.batches(0), []
    for _ in range(STEPS):
        state, metrics = p.update(state, next(batches))
        losses.append(np.asarray(metrics["loss"]))
    kernel = state.params["fc"]["kernel"]
    assert kernel.sharding.is_equivalent_to(NamedSharding(p.mesh, P("pack")), kernel.ndim)
    state = jax.device_get(state)
    for i, seed in enumerate(p.seeds):
        one = jax.tree.map(lambda x, i=i: x[i], state)
        assert_same_run(one, [loss[i] for loss in losses], *alone(seed, mode, real))


def test_the_mesh_puts_each_group_of_seeds_on_its_own_devices_and_xla_splits_the_work():
    shapes = {k: tuple(pack.create_mesh(k).devices.shape) for k in (1, 2, 3, 4, 5, 8, 12, 16)}
    assert shapes == {
        1: (1, 8),
        2: (2, 4),
        3: (3, 1),
        4: (4, 2),
        5: (5, 1),
        8: (8, 1),
        12: (6, 1),
        16: (8, 1),
    }
    p = pack.setup(cfg_of(0, 2))
    batch = next(p.batches(0))
    assert batch["index"].shape == (2, 16) and batch["index"].sharding.spec == P("pack", "data")
    # each device holds a quarter of one seed's batch...
    assert {s.data.shape for s in batch["index"].addressable_shards} == {(1, 4)}
    # ...and computes a quarter of that seed's step: XLA's count of the compiled per-device program, x 8
    # devices / 2 seeds, is the single step's (a vmap XLA did not partition over `data` counts 4x).
    single = train.setup(cfg_of(0))

    def flops(run) -> float:
        compiled = run.update.lower(run.abstract_state(), next(run.batches(0))).compile()
        analysis = compiled.cost_analysis()
        return (analysis[0] if isinstance(analysis, list | tuple) else analysis)["flops"] * 8

    assert flops(p) / 2 == pytest.approx(flops(single), rel=0.05)

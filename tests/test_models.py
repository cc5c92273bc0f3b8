"""The model zoo: exact parameter counts, shortcut options, BN modes, scan <-> unrolled equality."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.models.layers import shortcut_a

PARAMS = {
    ("cifar", 20, "A"): 269_722,
    ("cifar", 32, "A"): 464_154,
    ("cifar", 44, "A"): 658_586,
    ("cifar", 56, "A"): 853_018,
    ("cifar", 110, "A"): 1_727_962,
    ("cifar", 1202, "A"): 19_421_274,
    ("imagenet", 18, "B"): 11_689_512,
    ("imagenet", 34, "B"): 21_797_672,
    ("imagenet", 50, "B"): 25_557_032,
    ("imagenet", 101, "B"): 44_549_160,
    ("imagenet", 152, "B"): 60_192_808,
}


def shapes(model, size=32):
    x = jnp.zeros((2, size, size, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x))


@pytest.mark.parametrize("family,depth,shortcut", list(PARAMS))
def test_parameter_counts_match_the_paper(family, depth, shortcut):
    model = models.create(family, depth, shortcut, 10 if family == "cifar" else 1000)
    variables = shapes(model, 32 if family == "cifar" else 224)
    assert models.count_params(variables["params"]) == PARAMS[family, depth, shortcut]


def test_scanned_layout_keeps_the_parameter_count():
    model = models.create("cifar", 1202, "A", scan_blocks=True)
    variables = shapes(model)
    assert models.count_params(variables["params"]) == PARAMS["cifar", 1202, "A"]
    assert variables["params"]["stage2_scan"]["block"]["conv1"]["kernel"].shape == (199, 3, 3, 32, 32)


def test_shortcut_options_differ_only_where_the_paper_says():
    counts = {s: models.count_params(shapes(models.create("cifar", 20, s))["params"]) for s in "ABC"}
    counts["none"] = models.count_params(shapes(models.create("cifar", 20, "none"))["params"])
    # B adds a 1x1 conv + BN at the two shape changes; C on all nine blocks; plain = A (A is free).
    b_extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert counts["B"] - counts["A"] == b_extra
    c_extra = 3 * (16 * 16 + 32) + (16 * 32 + 64) + 2 * (32 * 32 + 64) + (32 * 64 + 128) + 2 * (64 * 64 + 128)
    assert counts["C"] - counts["A"] == c_extra
    assert counts["none"] == counts["A"]


def test_option_a_pads_zeros_symmetrically_after_subsampling():
    x = jnp.arange(2 * 4 * 4 * 16, dtype=jnp.float32).reshape(2, 4, 4, 16) + 1
    y = shortcut_a(x, 32, 2)
    assert y.shape == (2, 2, 2, 32)
    np.testing.assert_array_equal(y[..., :8], 0)
    np.testing.assert_array_equal(y[..., 24:], 0)
    np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])


def test_plain_net_has_no_shortcut_path():
    """A plain net whose residual branches output zero outputs zeros before the FC."""
    model = models.create("cifar", 8, "none", zero_init_residual=True)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    variables["params"]["fc"]["bias"] = jnp.zeros_like(variables["params"]["fc"]["bias"])
    np.testing.assert_array_equal(model.apply(variables, x), 0)
    residual = models.create("cifar", 8, "A", zero_init_residual=True)
    assert np.abs(residual.apply(variables, x)).max() > 0


@pytest.mark.parametrize("init,fan", [("fan_in", 9 * 32), ("fan_out", 9 * 64)])
def test_he_init_and_zero_init_residual(init, fan):
    """Convs are He-normal (std sqrt(2 / fan)); zero_init_residual zeroes each block's last BN scale only."""
    model = models.create("cifar", 8, "B", init=init, zero_init_residual=True)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    kernel = params["stage3_block0"]["conv1"]["kernel"]  # 3x3, 32 -> 64
    # the sample std of 3 x 3 x 32 x 64 = 18,432 normal draws: relative standard error 1 / sqrt(2 n) =
    # 0.52%; rel 0.03 is ~6 standard errors (a wrong fan is off by sqrt(2) = 41%)
    assert float(kernel.std()) == pytest.approx((2 / fan) ** 0.5, rel=0.03)
    for s in (1, 2, 3):
        block = params[f"stage{s}_block0"]
        np.testing.assert_array_equal(block["bn2"]["scale"], 0)
        np.testing.assert_array_equal(block["bn1"]["scale"], 1)
        if s > 1:
            np.testing.assert_array_equal(block["shortcut_bn"]["scale"], 1)
    np.testing.assert_array_equal(params["bn1"]["scale"], 1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(family="cifar", depth=21), "CIFAR depth must be 6n+2 (20, 32, 44, 56, 110, 1202, ...); got 21"),
        (dict(family="imagenet", depth=42), "ImageNet depth must be one of 18, 34, 50, 101, 152; got 42"),
        (dict(family="vgg", depth=16), "model family must be one of cifar, imagenet; got 'vgg'"),
        (dict(shortcut="D"), "shortcut must be one of A, B, C, none; got 'D'"),
        (dict(family="imagenet", depth=50, stride_on="2x2"), "stride_on must be '1x1'"),
        (dict(dtype="int8"), "dtype must be one of"),
    ],
)
def test_invalid_models_fail_at_create_with_one_sentence(kwargs, message):
    with pytest.raises(models.ModelError, match=re.escape(message)):
        models.create(**kwargs)


def test_bfloat16_compute_keeps_params_and_logits_float32():
    model = models.create("cifar", 8, "B", dtype="bfloat16")
    x = jnp.ones((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    logits, state = model.apply(
        variables, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True
    )
    assert logits.dtype == jnp.float32
    assert {a.dtype for a in jax.tree.leaves(state["batch_stats"])} == {jnp.dtype(jnp.float32)}
    # ...while every conv, BN and block in between computes in bfloat16 (only the FC is float32).
    outputs = jax.tree_util.tree_leaves_with_path(state["intermediates"])
    float32 = {jax.tree_util.keystr(p) for p, a in outputs if a.dtype != jnp.bfloat16}
    assert len(outputs) > 20 and float32 == {"['__call__'][0]", "['fc']['__call__'][0]"}


def loss_and_grads(model, variables, x, y):
    def loss_fn(params):
        logits, state = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        onehot = jax.nn.one_hot(y, logits.shape[-1])
        return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), state

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])


def test_scan_and_unrolled_give_identical_logits_and_gradients():
    unrolled = models.create("cifar", 20, "A")
    scanned = models.create("cifar", 20, "A", scan_blocks=True)
    # Batch 32: at batch 4, BN over so few examples makes the backward ill-conditioned (even jit
    # and eager differ by 10%); at 32 they agree to 3e-6.
    x = jax.random.normal(jax.random.key(1), (32, 8, 8, 3))
    y = jnp.arange(32) % 10
    variables = unrolled.init(jax.random.key(0), x)
    as_scan = models.convert_variables(variables, to_scan=True)
    assert jax.tree.structure(as_scan) == jax.tree.structure(shapes(scanned, 8))
    back = models.convert_variables(as_scan, to_scan=False)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), back, variables))

    # Scanned and unrolled are two XLA programs of the same arithmetic: sums regrouped, of 32 x 8 x 8
    # terms per BN moment and 3 x 3 x 64 per conv output over 19 layers (helpers.reordered_sum_rtol:
    # 19 x 4 sums x sqrt(2048) x u = 2e-4 relative at worst for the gradients; the logits and BN
    # statistics pass through 2 sums a layer, ~1e-5, as the comment above measured 3e-6).
    np.testing.assert_allclose(unrolled.apply(variables, x), scanned.apply(as_scan, x), rtol=1e-5, atol=1e-5)
    (loss_u, state_u), grads_u = loss_and_grads(unrolled, variables, x, y)
    (loss_s, state_s), grads_s = loss_and_grads(scanned, as_scan, x, y)
    np.testing.assert_allclose(loss_u, loss_s, rtol=1e-6)  # a mean of 32 terms: ~sqrt(32) u = 3e-7
    grads_s = models.convert_variables({"params": grads_s}, to_scan=False)["params"]
    stats_s = models.convert_variables(dict(state_s), to_scan=False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads_u, grads_s)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), dict(state_u), stats_s)


def test_remat_does_not_change_the_gradients():
    plain = models.create("cifar", 8, "A")
    remat = models.create("cifar", 8, "A", remat=True)
    x = jax.random.normal(jax.random.key(1), (32, 16, 16, 3))
    y = jnp.arange(32) % 10
    variables = plain.init(jax.random.key(0), x)
    (_, _), g1 = loss_and_grads(plain, variables, x, y)
    (_, _), g2 = loss_and_grads(remat, variables, x, y)
    # remat recomputes the same forward ops in the backward pass (the same program order per op): only
    # fusion boundaries may move, a few u per value; rtol 1e-5 is ~100 u.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g1, g2)


def compiled_convolutions(model, x):
    """Convolutions in the compiled gradient: remat adds recomputed forward ones."""
    variables = model.init(jax.random.key(0), x)
    y = jnp.arange(x.shape[0]) % 10
    grad = jax.jit(lambda v: loss_and_grads(model, v, x, y))
    return grad.lower(variables).compile().as_text().count(" convolution(")


def test_remat_survives_scan_blocks_on_unscanned_blocks():
    """Blocks outside the scan (here all: one block per stage) keep their recomputation; with
    prevent_cse=False outside a scan XLA's CSE merged it back into the forward."""
    x = jnp.ones((4, 8, 8, 3))
    plain = compiled_convolutions(models.create("cifar", 8, "A"), x)
    remat = compiled_convolutions(models.create("cifar", 8, "A", remat=True), x)
    assert remat > plain
    assert compiled_convolutions(models.create("cifar", 8, "A", remat=True, scan_blocks=True), x) == remat


@pytest.mark.parametrize("kernel,strides", [(3, 1), (7, 2)])
def test_channel_padded_conv_equals_conv(kernel, strides):
    """Zero input channels with zero kernel rows: the same parameter, outputs and gradients as `conv`."""
    from resnet_jax.models.layers import ChannelPaddedConv, conv

    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    plain = conv(8, kernel, strides, jnp.float32, "fan_in", "conv1")
    padded = ChannelPaddedConv(8, kernel, strides, 8, jnp.float32, "fan_in")
    params = plain.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, padded.init(jax.random.key(0), x), params)

    def loss(module, p):
        return jnp.sum(jnp.sin(module.apply(p, x)))

    # Zero channels add exact zeros to each conv sum, but change its length (and XLA's grouping of it):
    # sqrt(k x k x 8) x u ~ 1e-6 per output; the gradient sums over the whole batch's positions as well
    # (rtol 1e-4, atol 1e-5 for the near-zero entries).
    np.testing.assert_allclose(padded.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-5)
    g1, g2 = jax.grad(lambda p: loss(plain, p))(params), jax.grad(lambda p: loss(padded, p))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)


def test_channel_padded_stem_gives_the_same_network():
    plain = models.create("cifar", 8, "A")
    padded = models.create("cifar", 8, "A", stem_channels=4)
    x = jax.random.normal(jax.random.key(1), (32, 16, 16, 3))
    y = jnp.arange(32) % 10
    variables = plain.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, padded.init(jax.random.key(0), x), variables)
    (loss1, _), g1 = loss_and_grads(plain, variables, x, y)
    (loss2, _), g2 = loss_and_grads(padded, variables, x, y)
    # As above, over ResNet-8's 7 BN layers: the loss ~16 u, the gradients' sums over 32 x 16 x 16
    # positions regrouped: 7 x 4 x sqrt(8192) x u = 1.5e-4 at most (helpers.reordered_sum_rtol).
    np.testing.assert_allclose(loss1, loss2, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g2)


def test_bottleneck_stride_placement_v1_and_v15():
    x = jnp.zeros((1, 64, 64, 3))
    v1 = models.create("imagenet", 50, "B", 5, stride_on="1x1")
    v15 = models.create("imagenet", 50, "B", 5, stride_on="3x3")
    bound = {}
    for name, m in (("v1", v1), ("v15", v15)):
        _, inter = jax.eval_shape(
            lambda m=m: m.init_with_output(jax.random.key(0), x, capture_intermediates=True)
        )
        bound[name] = inter["intermediates"]["stage2_block0"]
    assert bound["v1"]["conv1"]["__call__"][0].shape == (1, 8, 8, 128)
    assert bound["v15"]["conv1"]["__call__"][0].shape == (1, 16, 16, 128)
    assert bound["v15"]["conv2"]["__call__"][0].shape == (1, 8, 8, 128)


class TestBatchNormGroups:
    """`bn_group_size` normalises each group of examples with its own statistics."""

    def test_groups_equal_separate_batches(self):
        model = models.create("cifar", 8, "A")
        grouped = models.create("cifar", 8, "A", bn_group_size=2)
        x = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
        variables = model.init(jax.random.key(0), x)
        out, state = grouped.apply(variables, x, train=True, mutable=["batch_stats"])
        parts = [model.apply(variables, x[i : i + 2], train=True, mutable=["batch_stats"]) for i in (0, 2, 4)]
        # One program normalising 3 groups vs 3 programs of one group: BN moments over 2 x 32 x 32
        # values grouped otherwise, sqrt(2048) u = 2.7e-6 per layer (rtol 1e-5 over ResNet-8's layers).
        np.testing.assert_allclose(out, jnp.concatenate([p[0] for p in parts]), rtol=1e-5, atol=1e-5)
        # Running statistics: the mean over groups of each group's update.
        mean_of_parts = jax.tree.map(lambda *s: sum(s) / 3, *[dict(p[1]) for p in parts])
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), dict(state), mean_of_parts
        )

    @pytest.mark.parametrize("group,batch", [(4, 6), (4, 10), (8, 4)])
    def test_group_size_that_does_not_divide_the_batch_is_refused(self, group, batch):
        """Not silently one group of 6 (or two of 5) for groups of 4, nor a ZeroDivisionError."""
        from resnet_jax.models.layers import BatchNorm

        bn = BatchNorm(train=True, group_size=group)
        message = f"BN group size {group} does not divide the batch of {batch}"
        with pytest.raises(ValueError, match=re.escape(message)):
            bn.init(jax.random.key(0), jnp.ones((batch, 2, 2, 3)))

    def test_global_differs_from_grouped(self):
        model = models.create("cifar", 8, "A")
        grouped = models.create("cifar", 8, "A", bn_group_size=2)
        x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
        variables = model.init(jax.random.key(0), x)
        a, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        b, _ = grouped.apply(variables, x, train=True, mutable=["batch_stats"])
        assert np.abs(a - b).max() > 1e-3  # different statistics change O(1) outputs by O(0.1), not 1e-3

"""Every config key declares its type and its valid values, and `config.check` refuses a value outside them,
naming the key, before anything is built."""

from __future__ import annotations

import math

import ml_collections
import pytest

from resnet_jax import cli, config, schema

KEYS = schema.keys()


def with_value(name: str, value) -> ml_collections.ConfigDict:
    """The default config with `name` set to `value`, past ConfigDict's own type checks."""
    tree = schema.base_config().to_dict()
    node = tree
    *parents, leaf = name.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    return ml_collections.ConfigDict(tree)


def bad_values(key: schema.Key) -> list:
    """Values the declaration refuses: out of its range, not among its choices, or a rule's own example."""
    if key.choices:
        return ["not-a-choice"]
    if key.rule:
        return [key.bad]
    if key.increasing:
        return [(3, 2), (-1,)]
    out = []
    if key.lo is not None:
        out.append(key.lo if key.lo_open else key.lo - 1)
    if key.hi is not None:
        out.append(key.hi if key.hi_open else key.hi + 1)
    return out


def test_every_key_declares_its_valid_values_or_is_explicitly_free():
    for name, key in KEYS.items():
        kinds = [bool(key.choices), key.lo is not None or key.hi is not None, key.increasing, bool(key.rule)]
        if key.free:
            assert not any(kinds), f"{name} is free and checked"
        else:
            assert sum(kinds) == 1, f"{name} declares {sum(kinds)} kinds of check: exactly one, or free=why"
        assert key.doc, f"{name} has no doc"
    assert schema.base_config().to_dict().keys() == {k.split(".")[0] for k in KEYS}


@pytest.mark.parametrize("name", [n for n, k in KEYS.items() if not k.free])
def test_a_value_outside_the_declaration_is_refused_naming_the_key(name):
    for value in bad_values(KEYS[name]):
        with pytest.raises(config.ConfigError) as e:
            config.check(with_value(name, value), 8)
        leaf = name.split(".")[-1]
        message = str(e.value)
        assert "\n" not in message and (name in message or leaf in message or "depth" in message), message


@pytest.mark.parametrize("name", list(KEYS))
def test_a_value_of_another_type_is_refused_naming_the_key(name):
    default = KEYS[name].default
    wrong = [1] if isinstance(default, str) else ["1"]
    if isinstance(default, float):
        wrong += [math.nan, math.inf]
    if isinstance(default, int) and not isinstance(default, bool):
        wrong += [1.5, True]
    for value in wrong:
        with pytest.raises(config.ConfigError, match=name.replace(".", r"\.")):
            config.check(with_value(name, value), 8)


def test_an_undeclared_key_is_refused():
    cfg = schema.base_config()
    cfg.model.widht = 2
    with pytest.raises(config.ConfigError, match="'model.widht' is not a config key"):
        config.check(cfg, 8)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"optimizer.nesterov": True, "optimizer.momentum": 0.0}, "needs optimizer.momentum > 0"),
        ({"model.bn": "per_device", "model.bn_group_size": 4}, "read only with model.bn='ghost'"),
        ({"schedule.warmup_steps": 400}, "schedule.warmup is 'none'"),
        ({"data.num_classes": 5}, "below the 10 classes of cifar10"),
    ],
)
def test_rules_across_keys(overrides, message):
    cfg = schema.base_config()
    for key, value in overrides.items():
        cli.override(cfg, key, value)
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(")):
        config.check(cfg, 8)


def test_the_defaults_and_every_experiment_config_pass():
    config.check(schema.base_config(), 8)

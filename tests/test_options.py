"""The TensorFlow-free tables of `tfsim.options` against the registries they describe: every
sampler kind, backbone and loss, its options, defaults, input kind, and each check on the values
a config can hold (same outcome, same message)."""

import dataclasses
import inspect
import typing

import pytest

from tfsim import config, options
from tfsim.data import samplers
from tfsim.errors import UserInputError
from tfsim.losses import LOSSES, get_loss, input_kind, loss_arguments, supports_cross_replica
from tfsim.models.backbones import BACKBONES, backbone_arguments


def test_sampler_kinds_and_their_defaults_are_the_samplers():
    assert options.SAMPLER_OPTIONS == samplers.KIND_OPTIONS
    assert [list(v) for v in options.SAMPLER_OPTIONS.values()] == [list(v) for v in samplers.KIND_OPTIONS.values()]
    assert options.SMALL_CLASSES == samplers.SMALL_CLASSES


def test_backbones_and_their_defaults_are_the_builders_signatures():
    assert list(options.BACKBONE_OPTIONS) == list(BACKBONES)
    for name, builder in BACKBONES.items():
        params = inspect.signature(builder).parameters
        assert list(options.BACKBONE_OPTIONS[name].items()) == [(k, params[k].default) for k in backbone_arguments(name)]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_has_its_constructors_arguments_defaults_and_input_kind(name):
    assert sorted(options.LOSS_OPTIONS) == sorted(LOSSES)
    params = inspect.signature(LOSSES[name].__init__).parameters
    entry = options.LOSS_OPTIONS[name]
    assert list(entry.arguments.items()) == [(k, params[k].default) for k in loss_arguments(name)]
    assert entry.input_kind == input_kind(name)
    assert entry.cross_replica == supports_cross_replica(name)
    assert set(entry.checks) <= set(entry.arguments)


def _probes(hint):
    """Values of a config type to try, invalid ones included (a string a Literal does not allow)."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)][0] if typing.get_origin(hint) is typing.Union \
        else hint
    if typing.get_origin(inner) is typing.Literal:
        return [*typing.get_args(inner), "nope"]
    if inner is bool:
        return [True, False]
    return [-1.0, -0.1, 0.0, 1e-6, 0.1, 1.0, 80.0]


def _outcome(call):
    try:
        call()
    except (ValueError, UserInputError) as err:
        return str(err)
    return None


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_losss_checks_agree_with_its_constructor_on_every_config_value(name):
    hints = typing.get_type_hints(config.LossConfig)
    tried = 0
    for arg in options.LOSS_OPTIONS[name].arguments:
        if arg not in hints:  # an argument the config cannot set (e.g. circle's remove_diagonal)
            continue
        for value in _probes(hints[arg]):
            built = _outcome(lambda: get_loss(name, **{arg: value}))
            checked = _outcome(lambda: options.check_loss_arguments(name, **{arg: value}))
            assert checked == built, (arg, value)
            tried += 1
    assert tried >= 1


def test_the_checks_catch_what_the_constructors_refuse():
    # (the agreement above would also hold if neither side checked anything)
    with pytest.raises(UserInputError, match=r"^Invalid value for `margin`: expected a number >= 0. Received: margin=-0.1$"):
        options.check_loss_arguments("triplet_semihard", margin=-0.1)
    with pytest.raises(UserInputError, match=r"`distance_metric`: expected one of \['squared-L2', 'L2'\] for the "):
        options.check_loss_arguments("triplet_margin", distance_metric="angular")
    options.check_loss_arguments("binomial_deviance", beta=-1.0, alpha=None)  # beta: any value; None: not set


@pytest.mark.parametrize("kind", sorted(samplers.KIND_OPTIONS))
def test_sampler_checks_agree_with_the_samplers_on_every_value(kind):
    keys = [f.name for f in dataclasses.fields(config.SamplerConfig)
            if f.name in ("batch_size", "classes_per_batch", "examples_per_class", "triplets_per_query")]
    failures = 0
    for key in keys:
        for value in (None, -1, 0, 1, 2, 3, 60):
            expected = _outcome(lambda: samplers.check_options(kind, **{key: value}))
            assert _outcome(lambda: options.check_sampler_options(kind, **{key: value})) == expected, (key, value)
            failures += expected is not None
    for value in ("replace", "skip", "nope"):
        expected = _outcome(lambda: samplers.check_options(kind, small_classes=value))
        assert _outcome(lambda: options.check_sampler_options(kind, small_classes=value)) == expected
    assert failures >= 2  # every kind refuses some sizes

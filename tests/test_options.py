"""The TensorFlow-free tables of `tfsim.options` against the registries they describe: every
sampler kind, backbone and loss, its options, defaults, input kind, and each check on the values
a config can hold (same outcome, same message)."""

import inspect
import typing

import pytest

from tfsim import config, options
from tfsim.data import samplers
from tfsim.errors import UserInputError
from tfsim.losses import LOSSES, get_loss, input_kind, loss_arguments, supports_cross_replica
from tfsim.models.backbones import BACKBONES, backbone_arguments


def test_sampler_defaults_are_the_sampler_functions_defaults():
    assert sorted(options.SAMPLER_OPTIONS) == ["epoch", "pk", "random", "triplets"]
    pk = inspect.signature(samplers.pk_batches).parameters
    assert options.SAMPLER_OPTIONS["pk"]["small_classes"] == pk["small_classes"].default
    assert pk["small_classes"].default in options.SMALL_CLASSES
    triplets = inspect.signature(samplers.triplet_batches).parameters
    assert options.SAMPLER_OPTIONS["triplets"]["triplets_per_query"] == triplets["triplets_per_query"].default


def test_backbones_and_their_defaults_are_the_builders_signatures():
    assert list(options.BACKBONE_OPTIONS) == list(BACKBONES)
    for name, builder in BACKBONES.items():
        params = inspect.signature(builder).parameters
        defaults = [(k, params[k].default) for k in backbone_arguments(name)]
        assert list(options.BACKBONE_OPTIONS[name].items()) == defaults


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
    with pytest.raises(UserInputError,
                       match=r"^Invalid value for `margin`: expected a number >= 0. Received: margin=-0.1$"):
        options.check_loss_arguments("triplet_semihard", margin=-0.1)
    with pytest.raises(UserInputError, match=r"`distance_metric`: expected one of \['squared-L2', 'L2'\] for the "):
        options.check_loss_arguments("triplet_margin", distance_metric="angular")
    options.check_loss_arguments("binomial_deviance", beta=-1.0, alpha=None)  # beta: any value; None: not set


def test_the_samplers_refuse_what_the_config_check_refuses():
    import numpy as np

    labels = np.repeat(np.arange(4), 5)
    for p, k in ((1, 2), (2, 1), (2.5, 2)):
        with pytest.raises(UserInputError) as raised:
            samplers.check_pk(labels, p, k)
        with pytest.raises(UserInputError) as config_check:
            options.check_sampler_options("pk", classes_per_batch=p, examples_per_class=k)
        assert str(raised.value) == str(config_check.value)
    bad_option = r"Invalid value for `small_classes`: expected one of \['replace', 'skip'\]"
    with pytest.raises(UserInputError, match=bad_option):
        samplers.check_pk(labels, 2, 2, small_classes="nope")
    samplers.check_pk(labels, 2, 2)  # valid sizes pass both
    options.check_sampler_options("pk", classes_per_batch=2, examples_per_class=2)

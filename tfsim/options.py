"""What each registered sampler kind, backbone and loss takes, readable without TensorFlow.

`tfsim.config` validates a config before any work starts, and the CLIs do that before they
import TensorFlow (about 6 s), so a mistake in a config or an override is reported at once.
The sampler kinds are defined here once (the samplers check their options with
`check_sampler_options`). The other registries (`tfsim.models.backbones.BACKBONES`,
`tfsim.losses.LOSSES`) live in modules that import TensorFlow or Keras; these tables say the same
without it: each variant's options with their defaults (in the order of the builder's signature),
what a loss takes as `y_pred`, and the checks on values a config can hold, with the builders'
own messages (naming the library argument; `tfsim.errors.config_keys` renames it to the config
key). `check_sampler_options` is the samplers' own check (they call it); `check_loss_arguments`
repeats each loss constructor's checks, since a loss is a Keras class that checks its arguments
wherever it is built.

The registries stay the truth: tests/test_options.py checks every entry against them (names,
arguments, defaults, input kinds, and each loss check against its constructor on probe values),
so a loss added there and not here, or a check changed on one side only, fails the tests.

Example:
    >>> LOSS_OPTIONS["nca"].arguments
    {'scale': 1.0, 'cross_replica': False}
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Optional, Sequence

from tfsim.errors import UserInputError

# Sampler kinds (tfsim.data.samplers) and their options' defaults.
SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {
    "pk": {"classes_per_batch": 6, "examples_per_class": 10, "small_classes": "replace"},
    "random": {"batch_size": 60},
    "epoch": {"batch_size": 60},
    "triplets": {"batch_size": 60, "triplets_per_query": 4},
}
# What P x K sampling does with a class of fewer than K images: draw K of its images with
# replacement, or leave the class out of the batches.
SMALL_CLASSES = ("replace", "skip")

# Backbones and their options' defaults besides `image_size` and `weights`
# (the signatures of `tfsim.models.backbones.BACKBONES`).
BACKBONE_OPTIONS: dict[str, dict[str, Any]] = {
    "small_resnet": {"width": 32, "blocks_per_stage": 1, "zero_init_residual": False},
    "resnet50": {},
}


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """One registered loss: its constructor's `arguments` (name -> default, in order, without Keras's
    `name`, `reduction`, `dtype`), its `input_kind` (see `tfsim.losses`) and the `checks` its
    constructor makes: argument -> ">= 0", "> 0", or the allowed values (with a note for the message)."""

    arguments: dict[str, Any]
    input_kind: str = "embeddings"
    checks: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def cross_replica(self) -> bool:
        """Whether the loss has the `cross_replica` option (tfsim's batch losses)."""
        return "cross_replica" in self.arguments


_LOSS_DISTANCES = (("L2", "squared-L2", "angular"), " or a callable returning the [B, B] distance matrix")
LOSS_OPTIONS: dict[str, LossOptions] = {
    "triplet_semihard": LossOptions({"margin": 1.0, "distance_metric": "L2", "cross_replica": False},
                                    checks={"margin": ">= 0", "distance_metric": _LOSS_DISTANCES}),
    "triplet_hard": LossOptions({"margin": 1.0, "soft": False, "distance_metric": "L2", "cross_replica": False},
                                checks={"margin": ">= 0", "distance_metric": _LOSS_DISTANCES}),
    "lifted_struct": LossOptions({"margin": 1.0, "cross_replica": False}, checks={"margin": ">= 0"}),
    "multi_similarity": LossOptions({"alpha": 2.0, "beta": 50.0, "base": 0.5, "epsilon": 0.1, "cross_replica": False},
                                    checks={"alpha": "> 0"}),
    "contrastive": LossOptions({"pos_margin": 0.0, "neg_margin": 1.0, "distance_metric": "L2", "cross_replica": False},
                               checks={"distance_metric": _LOSS_DISTANCES}),
    "binomial_deviance": LossOptions({"alpha": 2.0, "beta": 0.5, "cost": 25.0, "cross_replica": False},
                                     checks={"alpha": "> 0", "cost": "> 0"}),
    "nca": LossOptions({"scale": 1.0, "cross_replica": False}, checks={"scale": "> 0"}),
    "circle": LossOptions({"gamma": 80.0, "margin": 0.4, "remove_diagonal": True}, checks={"gamma": "> 0"}),
    "normalized_softmax": LossOptions({"temperature": 0.05}, "proxy_similarities", checks={"temperature": "> 0"}),
    "proxy_nca": LossOptions({"scale": 1.0}, "proxy_similarities", checks={"scale": "> 0"}),
    "triplet_margin": LossOptions({"margin": 1.0, "distance_metric": "squared-L2", "cross_replica": False}, "triplets",
                                  checks={"margin": ">= 0",
                                          "distance_metric": (("squared-L2", "L2"), " for the explicit-triplet loss")}),
    "batch_all_triplet": LossOptions({"margin": 0.2, "triplets": "semihard", "cross_replica": False},
                                     checks={"margin": ">= 0", "triplets": (("semihard", "hard", "all", "easy"), "")}),
}


def check_loss_arguments(name: str, **kwargs: Any) -> None:
    """Makes the checks of loss `name`'s constructor on `kwargs` (None = not set), as it would.

    Raises:
        UserInputError: the constructor's message, naming the argument (e.g. "Invalid value for
            `margin`: expected a number >= 0. Received: margin=-0.1").
    """
    checks = LOSS_OPTIONS[name].checks
    for arg in LOSS_OPTIONS[name].arguments:
        value, check = kwargs.get(arg), checks.get(arg)
        if value is None or check is None:
            continue
        if isinstance(check, str):
            number = float(value)
            if not (number >= 0 if check == ">= 0" else number > 0):
                raise UserInputError(f"Invalid value for `{arg}`: expected a number {check}. "
                                     f"Received: {arg}={number!r}")
        elif value not in check[0]:
            raise UserInputError(f"Invalid value for `{arg}`: expected one of {list(check[0])}{check[1]}. "
                                 f"Received: {arg}={value!r}")


def check_sampler_options(kind: str, batch_size: Optional[int] = None, classes_per_batch: Optional[int] = None,
                          examples_per_class: Optional[int] = None, triplets_per_query: Optional[int] = None,
                          small_classes: Optional[str] = None) -> None:
    """Checks a sampler kind's options without the data (None = not set), naming the samplers'
    arguments. The one definition: the config and the samplers both call it.

    Raises:
        UserInputError: e.g. "Invalid value for `examples_per_class`: expected an integer >= 2 so
            every batch holds positive pairs. Received: examples_per_class=1".
    """
    if kind == "pk":
        for key, value, why in (("examples_per_class", examples_per_class, "holds positive pairs"),
                                ("classes_per_batch", classes_per_batch, "holds negatives")):
            if value is not None and (not isinstance(value, numbers.Integral) or value < 2):
                raise UserInputError(f"Invalid value for `{key}`: expected an integer >= 2 so every batch {why}. "
                                     f"Received: {key}={value!r}")
    if small_classes is not None and small_classes not in SMALL_CLASSES:
        raise UserInputError(f"Invalid value for `small_classes`: expected one of {list(SMALL_CLASSES)}. "
                             f"Received: small_classes={small_classes!r}")
    least = 3 if kind == "triplets" else 2
    if batch_size is not None and batch_size < least:
        raise UserInputError(f"Invalid value for `batch_size`: expected an integer >= {least}. "
                             f"Received: batch_size={batch_size!r}")
    if triplets_per_query is not None and triplets_per_query < 1:
        raise UserInputError("Invalid value for `triplets_per_query`: expected an integer >= 1. "
                             f"Received: triplets_per_query={triplets_per_query!r}")


def scalar_metrics(recall_ks: Sequence[int]) -> list[str]:
    """The names of the retrieval metrics a run reports as one number each, with `eval.recall_ks`:
    what `train.select_metric` and `tune.objective` may name.

    Example:
        >>> scalar_metrics((1, 2))
        ['recall@1', 'recall@2', 'map@r', 'r_precision']
    """
    return [f"recall@{k}" for k in recall_ks] + ["map@r", "r_precision"]

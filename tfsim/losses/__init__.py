"""tfsim's metric-learning losses: pure functions plus registered Keras classes.

`LOSSES` maps the names used in configs (`loss.name`) to Keras loss classes;
`get_loss(name, **kwargs)` builds one with a clear error for unknown names. Each class
says what its `y_pred` is (`input_kind`), which the training pipeline uses to build the
model and batches:

* "embeddings": a labelled batch of embeddings (P x K or random batches). Mining losses
  (tfa-compatible triplet and lifted losses, the PML-style batch-all triplet loss,
  multi-similarity, contrastive, binomial deviance, NCA) and Keras's own
  `keras.losses.Circle`, registered as it is rather than rewritten.
* "proxy_similarities": cosine similarities to learned class proxies
  (`tfsim.models.proxies.CosineProxies`): normalized softmax, Proxy-NCA.
* "triplets": explicit (query, positive, negative) rows from the triplet sampler:
  the triplet margin loss.

A cross-batch memory (`MemoryTrainer`, `tfsim.losses.memory`) lets the mining losses of
embeddings see each batch against the embeddings of the last M training images.
"""

from __future__ import annotations

import inspect

import keras

from tfsim.losses import _masks
from tfsim.losses.batch_all import BatchAllTripletLoss, batch_all_triplet_loss
from tfsim.losses.binomial import BinomialDevianceLoss, binomial_deviance_loss
from tfsim.losses.contrastive import ContrastiveLoss, contrastive_loss
from tfsim.losses.lifted import LiftedStructLoss, lifted_struct_loss
from tfsim.losses.memory import CrossBatchMemory, MemoryTrainer
from tfsim.losses.multi_similarity import MultiSimilarityLoss, multi_similarity_loss
from tfsim.losses.nca import NCALoss, nca_loss
from tfsim.losses.proxy import NormalizedSoftmaxLoss, ProxyNCALoss, normalized_softmax_loss, proxy_nca_loss
from tfsim.losses.triplet import (TripletHardLoss, TripletMarginLoss, TripletSemiHardLoss, triplet_hard_loss,
                                  triplet_margin_loss, triplet_semihard_loss)

LOSSES = {
    "triplet_semihard": TripletSemiHardLoss,
    "triplet_hard": TripletHardLoss,
    "lifted_struct": LiftedStructLoss,
    "multi_similarity": MultiSimilarityLoss,
    "contrastive": ContrastiveLoss,
    "binomial_deviance": BinomialDevianceLoss,
    "nca": NCALoss,
    "circle": keras.losses.Circle,
    "normalized_softmax": NormalizedSoftmaxLoss,
    "proxy_nca": ProxyNCALoss,
    "triplet_margin": TripletMarginLoss,
    "batch_all_triplet": BatchAllTripletLoss,
}


def input_kind(name: str) -> str:
    """What the registered loss `name` takes as `y_pred` (see module doc)."""
    return getattr(LOSSES[name], "input_kind", "embeddings")


def supports_cross_replica(name: str) -> bool:
    """Whether the loss has the `cross_replica` option (tfsim's batch losses)."""
    return "cross_replica" in inspect.signature(LOSSES[name].__init__).parameters


def loss_arguments(name: str) -> list[str]:
    """The constructor arguments of the registered loss `name` (besides Keras's `name`, `reduction`, `dtype`)."""
    params = inspect.signature(LOSSES[name].__init__).parameters
    return [k for k, p in params.items() if k not in ("self", "name", "reduction", "dtype")
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def get_loss(name: str, **kwargs):
    """Builds the registered loss `name`; arguments that are None take the loss's own default.

    Raises:
        ValueError: an unknown `name`, or an argument the loss does not take (a typo, or an
            argument of another loss), naming the arguments it does take.
    """
    if name not in LOSSES:
        raise ValueError(
            f"Invalid value for `name`: expected one of {sorted(LOSSES)}. Received: name={name!r}")
    accepted = loss_arguments(name)
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise ValueError(
            f"Invalid argument {unknown[0]!r} for loss {name!r}: expected some of {accepted}. "
            f"Received: {unknown[0]}={kwargs[unknown[0]]!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name == "circle" and "gamma" in kwargs:  # Keras's class, registered as is, does not check it
        _masks.check_positive("gamma", kwargs["gamma"])
    return LOSSES[name](**kwargs)


__all__ = ["LOSSES", "BatchAllTripletLoss", "BinomialDevianceLoss", "ContrastiveLoss", "CrossBatchMemory",
           "LiftedStructLoss", "MemoryTrainer",
           "MultiSimilarityLoss", "NCALoss", "NormalizedSoftmaxLoss", "ProxyNCALoss", "TripletHardLoss",
           "TripletMarginLoss", "TripletSemiHardLoss", "batch_all_triplet_loss", "binomial_deviance_loss",
           "contrastive_loss", "get_loss", "input_kind", "loss_arguments",
           "lifted_struct_loss", "multi_similarity_loss", "nca_loss", "normalized_softmax_loss",
           "proxy_nca_loss", "supports_cross_replica", "triplet_hard_loss", "triplet_margin_loss",
           "triplet_semihard_loss"]

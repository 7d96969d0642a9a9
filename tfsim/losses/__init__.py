"""tfsim's metric-learning losses: pure functions plus registered Keras classes.

`LOSSES` maps the names used in configs (`loss.name`) to the Keras classes;
`get_loss(name, **kwargs)` builds one with a clear error for unknown names.
"""

from __future__ import annotations

import inspect

from tfsim.losses.binomial import BinomialDevianceLoss, binomial_deviance_loss
from tfsim.losses.contrastive import ContrastiveLoss, contrastive_loss
from tfsim.losses.lifted import LiftedStructLoss, lifted_struct_loss
from tfsim.losses.multi_similarity import MultiSimilarityLoss, multi_similarity_loss
from tfsim.losses.triplet import (TripletHardLoss, TripletSemiHardLoss, triplet_hard_loss,
                                  triplet_semihard_loss)

LOSSES = {
    "triplet_semihard": TripletSemiHardLoss,
    "triplet_hard": TripletHardLoss,
    "lifted_struct": LiftedStructLoss,
    "multi_similarity": MultiSimilarityLoss,
    "contrastive": ContrastiveLoss,
    "binomial_deviance": BinomialDevianceLoss,
}


def get_loss(name: str, **kwargs):
    """Builds the registered loss `name` from config values.

    Only the arguments the loss's constructor takes are passed (a config section holds
    the union of all losses' arguments, e.g. `distance_metric` means nothing to
    `lifted_struct`, which is defined on plain L2).
    """
    if name not in LOSSES:
        raise ValueError(
            f"Invalid value for `loss.name`: expected one of {sorted(LOSSES)}. Received: {name!r}")
    cls = LOSSES[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


__all__ = ["LOSSES", "BinomialDevianceLoss", "ContrastiveLoss", "binomial_deviance_loss", "LiftedStructLoss", "contrastive_loss", "MultiSimilarityLoss", "TripletHardLoss", "TripletSemiHardLoss",
           "get_loss", "lifted_struct_loss", "multi_similarity_loss", "triplet_hard_loss",
           "triplet_semihard_loss"]

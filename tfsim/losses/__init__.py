"""tfsim's metric-learning losses: pure functions plus registered Keras classes.

`LOSSES` maps the names used in configs (`loss.name`) to the Keras classes;
`get_loss(name, **kwargs)` builds one with a clear error for unknown names.
"""

from __future__ import annotations

from tfsim.losses.triplet import TripletSemiHardLoss, triplet_semihard_loss

LOSSES = {
    "triplet_semihard": TripletSemiHardLoss,
}


def get_loss(name: str, **kwargs):
    """Builds the registered loss `name` with constructor `kwargs`."""
    if name not in LOSSES:
        raise ValueError(
            f"Invalid value for `loss.name`: expected one of {sorted(LOSSES)}. Received: {name!r}")
    return LOSSES[name](**kwargs)


__all__ = ["LOSSES", "TripletSemiHardLoss", "get_loss", "triplet_semihard_loss"]

"""The schema: a neutral `Config()`, and what of a section reaches the loss."""

import pytest

from tfsim import config

def test_config_itself_names_no_dataset_split_or_run():
    cfg = config.Config()
    assert cfg.data.test_classes == () and cfg.run.name is None and cfg.loss.margin is None


def test_unset_loss_arguments_take_each_loss_default():
    from tfsim.losses import get_loss
    cfg = config.load("default", ["loss.name=binomial_deviance"])
    assert config.loss_args(cfg.loss) == {}  # nothing set: every argument is the loss's own default
    loss = get_loss(cfg.loss.name, **config.loss_args(cfg.loss))
    assert (loss.alpha, loss.beta, loss.cost) == (2.0, 0.5, 25.0)  # not multi-similarity's beta=50
    cfg = config.load("default", ["loss.name=triplet_hard", "loss.margin=null", "loss.soft=true",
                                  "loss.cross_replica=true"])
    assert config.loss_args(cfg.loss) == {"soft": True, "cross_replica": True}
    loss = get_loss(cfg.loss.name, **config.loss_args(cfg.loss))
    assert (loss.margin, loss.soft, loss.distance_metric, loss.cross_replica) == (1.0, True, "L2", True)


def test_get_loss_rejects_arguments_the_loss_does_not_take():
    from tfsim.losses import get_loss
    with pytest.raises(ValueError, match=r"Invalid argument 'margn' for loss 'triplet_hard': expected some of "
                                         r"\['margin', 'soft', 'distance_metric', 'cross_replica'\]"):
        get_loss("triplet_hard", margn=0.3)
    with pytest.raises(ValueError, match=r"Invalid value for `name`: expected one of"):
        get_loss("triplet_hardest")
    assert get_loss("triplet_hard", margin=None).margin == 1.0  # None: the loss's default

"""A proxy loss trained on epoch batches (every training image once per epoch)."""

import pytest

from tfsim import config
from tfsim.errors import UserInputError
from tfsim.training import stages, train

pytestmark = pytest.mark.slow  # trains a model (see pyproject.toml)


def test_normalized_softmax_on_one_pass_epochs(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "MAX_RAW_PIXEL_BYTES", 0)  # raw-pixel baselines: not compared here, and slow
    cfg = config.load("default", ["loss.name=normalized_softmax", "sampler.kind=epoch", "sampler.batch_size=120",
                                  "train.steps_per_epoch=0", "train.epochs=2", "model.width=8",
                                  "model.embedding_dim=32", "export.enabled=false", "eval.every_epoch=false"])
    result = train(cfg, tmp_path / "run", verbose=0)
    # The last two epochs are kept (a damaged last checkpoint resumes from the one before).
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch-0001.keras",
                                                                                   "epoch-0002.keras"]
    m = result.metrics
    assert m["map@r"] > m["baselines"]["untrained"]["map@r"] + 0.02  # measured 0.336 vs 0.293
    with pytest.raises(UserInputError, match=r"`train.steps_per_epoch`: expected 1..30 \(one pass over the 3600"):
        train(config.load("default", ["sampler.kind=epoch", "sampler.batch_size=120", "train.steps_per_epoch=31"]),
              tmp_path / "other", verbose=0)
    with pytest.raises(UserInputError, match=r"`train.steps_per_epoch`: expected an integer >= 1 \(0, one whole "
                                             r"pass, only with sampler.kind=epoch\)"):
        config.load("default", ["train.steps_per_epoch=0"])

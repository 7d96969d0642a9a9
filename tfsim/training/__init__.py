"""Training: `train(cfg)` runs `fit` (data -> checkpoints) and the stages after it
(`tfsim.training.stages`: whitening, evaluation, export, index), joined by files in the run folder."""

from tfsim.training.fit import FitResult, fit, get_strategy, load_split
from tfsim.training.train import TrainResult, train

__all__ = ["FitResult", "TrainResult", "fit", "get_strategy", "load_split", "train"]

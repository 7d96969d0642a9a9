"""Training: strategy selection, `train(cfg)`, callbacks, checkpoint/resume."""

from tfsim.training.train import TrainResult, get_strategy, train

__all__ = ["TrainResult", "get_strategy", "train"]

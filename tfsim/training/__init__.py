"""Training: `train(cfg)` runs `fit` (data -> checkpoints) and the stages after it
(`tfsim.training.stages`: whitening, evaluation, export, index), joined by files in the run folder.

`Task(cfg)` (`tfsim.training.task`) is the one place where a config becomes objects: the data
split, the training batches, the model, loss, optimiser, per-epoch metrics and callbacks. Train,
tune, evaluate and the baselines build through it; `fit` is the loop that runs them."""

from tfsim.training.loop import FitResult, fit, get_strategy
from tfsim.training.task import Split, Task, build_embedder, load_split
from tfsim.training.run import TrainResult, train

__all__ = ["FitResult", "Split", "Task", "TrainResult", "build_embedder", "fit", "get_strategy", "load_split",
           "train"]

"""Training: `train(cfg)` runs `fit` (data -> checkpoints) and the stages after it
(`tfsim.training.stages`: whitening, evaluation, export, index), joined by files in the run folder.

`Task(cfg)` (`tfsim.training.task`) is the one place where a config becomes objects: the data
split, the training batches, the model, loss, optimiser, per-epoch metrics and callbacks. Train,
tune, evaluate and the baselines build through it; `fit` is the loop that runs them.

`evaluate(model, data)` (`tfsim.training.assessment`) measures a trained model (an export, a
run or a checkpoint) on any images and writes its report; `format_table` is that report's
console table. `summarize_names` shortens a list of class names for a log line.

Public (`__all__`, listed in `tfsim.PUBLIC_API`): what the train, tune and evaluate commands use."""

from tfsim.evaluation.report import format_table
from tfsim.training.assessment import evaluate
from tfsim.training.loop import FitResult, fit, get_strategy, summarize_names
from tfsim.training.task import Split, Task, build_embedder, load_split
from tfsim.training.run import TrainResult, train

__all__ = ["FitResult", "Split", "Task", "TrainResult", "build_embedder", "evaluate", "fit", "format_table",
           "get_strategy", "load_split", "summarize_names", "train"]

"""Typed configuration: frozen dataclasses, named presets, overrides and validation.

    schema.py    the sections (`Config`, `DataConfig`, ...) and what reaches the builders
                 (`loss_args`, `backbone_args`)
    parsing.py   presets, JSON config files, `--set` overrides, `load`, `resolve`
    validate.py  one check per section; `validate` runs them all

A config is loaded and validated before TensorFlow is imported (about 6 s): nothing in this
package imports it, and the registries are read through the TensorFlow-free `tfsim.options`, so
a command reports a mistake at once. Building objects from a config is `tfsim.training.task`'s job.
`scalar_metrics(recall_ks)` (from `tfsim.options`) names the metrics a run reports as one number
each: what `train.select_metric` and `tune.objective` may name.

Example:
    >>> from tfsim import config
    >>> cfg = config.load("default", ["train.epochs=2", "model.embedding_dim=32"])
    >>> cfg.train.epochs
    2
"""

from tfsim.config.parsing import (PRESET_DIR, apply_overrides, coerce, from_dict, load, load_preset,
                                  preset_descriptions, presets, resolve)
from tfsim.config.schema import (BACKBONE_KEYS, LOSS_KEYS, SAMPLER_KEYS, SOURCE_KEYS, Config, DataConfig, EvalConfig,
                                 ExportConfig, IndexConfig, LossConfig, ModelConfig, RunConfig, SamplerConfig,
                                 TrainConfig, TuneConfig, WhiteningConfig, backbone_args, loss_args, to_dict)
from tfsim.config.validate import folder_name_problem, validate
from tfsim.options import scalar_metrics

__all__ = ["BACKBONE_KEYS", "LOSS_KEYS", "PRESET_DIR", "SAMPLER_KEYS", "SOURCE_KEYS", "Config", "DataConfig",
           "EvalConfig", "ExportConfig", "IndexConfig", "LossConfig", "ModelConfig", "RunConfig", "SamplerConfig",
           "TrainConfig", "TuneConfig", "WhiteningConfig", "apply_overrides", "backbone_args", "coerce",
           "folder_name_problem", "from_dict", "load", "load_preset", "loss_args", "preset_descriptions", "presets",
           "resolve", "scalar_metrics", "to_dict", "validate"]

"""tfsim: image similarity (deep metric learning) with TensorFlow and Keras, from a folder of
labelled images to a served ScaNN index; and a library for your own Keras code.

The package is layered; a module imports only from its own layer or those below it, never
upward, not even inside a function, and no two sub-packages import each other
(tests/test_layers.py checks it). Bottom to top:

    errors, options, distances,   user errors; what each sampler, backbone and loss takes
    locks, files                  (TensorFlow-free); one definition per distance; folder
                                  locks; atomic writes and version folders
    data/                         sources (folder, list file, TFDS, the shipped default), data
                                  specs, splits, decoding, tf.data pipelines, P x K samplers
    losses/, models/              one file per loss family (functions + Keras classes);
                                  backbones, embedding head, proxies, whitening
    config/                       schema (frozen dataclasses), parsing (presets, --set),
                                  per-section validation
    runs.py                       a run folder's artefacts: checkpoints, whitening, the model
    evaluation/                   k-NN, Recall@K / MAP@R / mAP, calibration (a "same class?"
                                  threshold), report tables, embedding with a Keras model: a library
    callbacks, metrics,           their public faces for your own Keras code: the evaluation
    calibration                   callback, whole-set metrics, a calibrated threshold
    index/                        float search (ScaNN), Hamming search, self-tuning, the ANN
                                  quality, storage of an index folder; `Index`, its public face
    layers                        Keras retrieval layers (exact, ScaNN) saved with their candidates
    export/                       SavedModels for TF Serving: an export's identity, embedding
                                  with it, retrieval exports, indexing and searching catalogues
    training/                     the Task (a config becomes inputs, model, loss, optimizer,
                                  callbacks, metrics), the fit loop, distributed training, the
                                  stages after it, evaluating a trained model
    tuning/                       keras-tuner search (its private API behind one adapter)
    catalogue/                    catalogues past one machine: the Apache Beam embedding job,
                                  Parquet embedding shards, indexing and evaluating them
    pipelines/                    thin CLIs: `python -m tfsim.pipelines.{train,evaluate,index,search,tune,embed}`

The public API (semantic versioning starts here) is `PUBLIC_API` below: each public module and
the names it exports, which are exactly its `__all__`. `import tfsim` imports no TensorFlow; a
public module is imported on first use (`tfsim.layers`, PEP 562), so a command can check its
arguments before paying about 6 s for TensorFlow. tests/test_public_api.py checks that every
name listed resolves, and that none of tests/public_api.txt (the names released) disappears:
removing or renaming one is a breaking change (a new major version). The command-line pipelines
import only these names (that test parses them), which shows the API is enough to build them.

    import keras, tfsim
    model.compile(optimizer="adam", loss=tfsim.losses.TripletSemiHardLoss(margin=0.5))
    layer = tfsim.layers.Retrieval(k=5)
    index = tfsim.index.Index.build(embeddings, ids=ids)
"""

import importlib as _importlib
from importlib import metadata as _metadata

# Each public module -> the names it exports (its `__all__`), sorted. Adding a name is a minor
# version; removing or renaming one a major version (tests/public_api.txt records the released ones).
PUBLIC_API: dict[str, tuple[str, ...]] = {
    "calibration": ("Calibration", "CalibrationCurve", "calibrate", "calibrate_pairs"),
    "callbacks": ("RetrievalEvaluation",),
    "catalogue": ("EmbeddingShards", "add_shards", "embed_catalogue", "evaluate_shards", "index_shards", "read_shards"),
    "config": ("BACKBONE_KEYS", "Config", "DataConfig", "EvalConfig", "ExportConfig", "IndexConfig", "LOSS_KEYS",
               "LossConfig", "ModelConfig", "PRESET_DIR", "RunConfig", "SAMPLER_KEYS", "SOURCE_KEYS", "SamplerConfig",
               "TrainConfig", "TuneConfig", "WhiteningConfig", "apply_overrides", "backbone_args", "coerce",
               "folder_name_problem", "from_dict", "load", "load_preset", "loss_args", "preset_descriptions",
               "presets", "resolve", "scalar_metrics", "to_dict", "validate"),
    "data": ("pk_dataset",),
    "errors": ("DiskFull", "UserInputError", "disk_full_errno"),
    "export": ("SCANN_CONFIG", "STOCK_CONFIG", "SearchResult", "add_to_index", "build_index", "check_output",
               "embed_export", "export_embedder", "export_retrieval", "index_model", "next_version", "read_export",
               "render_grid", "search_image"),
    "index": ("Index", "ShardedIndex", "build_options", "read_meta"),
    "layers": ("Retrieval", "ScannRetrieval"),
    "losses": ("BatchAllTripletLoss", "BinomialDevianceLoss", "ContrastiveLoss", "CrossBatchMemory", "LOSSES",
               "LiftedStructLoss", "MemoryTrainer", "MultiSimilarityLoss", "NCALoss", "NormalizedSoftmaxLoss",
               "ProxyNCALoss", "TripletHardLoss", "TripletMarginLoss", "TripletSemiHardLoss",
               "batch_all_triplet_loss", "binomial_deviance_loss", "contrastive_loss", "get_loss", "input_kind",
               "lifted_struct_loss", "loss_arguments", "multi_similarity_loss", "nca_loss",
               "normalized_softmax_loss", "proxy_nca_loss", "supports_cross_replica", "triplet_hard_loss",
               "triplet_margin_loss", "triplet_semihard_loss"),
    "metrics": ("clustering_metrics", "metrics_from_neighbors", "retrieval_metrics"),
    "models": ("BACKBONES", "build_embedding_model", "get_backbone"),
    "training": ("FitResult", "Split", "Task", "TrainResult", "build_embedder", "evaluate", "fit", "format_table",
                 "get_strategy", "load_split", "summarize_names", "train"),
    "tuning": ("TuneResult", "parse_grid", "tune"),
}

try:
    __version__ = _metadata.version("tfsim")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["PUBLIC_API", "__version__", *sorted(PUBLIC_API)]


def __getattr__(name: str):
    """`tfsim.<public module>`, imported on first use (PEP 562)."""
    if name in PUBLIC_API:
        return _importlib.import_module(f"tfsim.{name}")  # (the import also sets it as an attribute here)
    raise AttributeError(f"module 'tfsim' has no attribute {name!r}; its public modules are {sorted(PUBLIC_API)}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

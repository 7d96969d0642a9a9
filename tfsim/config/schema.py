"""The config's schema: one frozen dataclass per section of a run, and what reaches the builders.

`Config()` itself is neutral: it names no dataset's split or run. Dataset choices (which
classes the shipped Fashion-MNIST subset holds out, the cars/birds set-ups) live in the
presets (`tfsim.config.parsing`).

Some settings are one variant of several, and the arguments of one variant do not carry
over to another: an override or file that changes `loss.name` starts that loss from its
own defaults (see `LossConfig`), and one that changes `data.source` starts that source
from its own defaults (see `DataConfig`). `VARIANT_KEYS` names, per section, the tag and
the keys that belong to one variant.

Example:
    >>> loss_args(LossConfig(name="contrastive", neg_margin=0.5))
    {'neg_margin': 0.5}
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from tfsim.data.formats import DEFAULT_MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where a run writes: `<root>/<name>/`.

    `name`: null = named after the data (`fashion_mnist_small` for the shipped set, the
    folder's name, the TFDS dataset's name); `resolve()` fills it in.
    """

    name: Optional[str] = None
    root: str = "runs"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which labelled images, and which classes are held out for evaluation.

    `source`: "default" (the shipped Fashion-MNIST subset), "folder"
    (`path/<class>/<image>`), "list" (`path` is a list file: a `path,label[,split]` CSV,
    Stanford Online Products' `Ebay_train.txt`, In-Shop's `list_eval_partition.txt`,
    CUB's `images.txt` or Tiny ImageNet's `wnids.txt`, see `tfsim.data.lists`; `image_root`: the folder its paths start
    from, found when null) or "tfds" (`tfds_name`, e.g. cars196). `test_classes`:
    label indices held out (never trained on); empty (the default) = the list's published
    class-disjoint split when it has one (SOP, In-Shop, a CSV's split column), else the
    second half of the classes in label order (sorted folder names; numeric class ids in
    numeric order), the papers' split for cars196 and CUB-200. `test_fraction` > 0 (and no
    `test_classes`): that share of the classes, drawn at random with `split_seed`, is held out
    instead (for a folder of your own, where label order may mean something). Changing `source` resets
    `path`, `image_root`, the `tfds_*` keys, `data_dir`, `manual_dir` and `test_classes` to
    their defaults unless the same update sets them, so a preset's split never silently
    applies to another dataset.
    `protocol`: "class_disjoint" (the metric-learning papers: held-out classes, each image
    querying the others, or In-Shop's query/gallery) or "database_query" (the retrieval and
    hashing projects on Stanford Dogs, Tiny ImageNet, CUB: train on the source's "train"
    split; its other images, same classes, query a database of the training images; needs a
    source that says which image is in which split: TFDS `train+test`, a list with splits).
    `augment`: augment training images: `augmentation` "shift" (default: a random shift by up
    to 10% of the side, for small centred images) or "random_resized_crop" (a random crop of
    8-100% of the area, aspect 3/4-4/3, resized to the model's side: the natural-photo presets,
    with `model.center_crop=0.875` for evaluation and serving); `flip`: also
    mirror them left-right at random (off by default: a mirrored digit or letter is another
    symbol; turn it on for natural images); `erase_prob`: probability of also erasing a
    random rectangle (random erasing). See `tfsim.data.pipeline.augment`. `on_bad_file`
    (folders): image files the pipeline cannot decode are skipped and listed in the run's
    `data_report.json` ("skip"), or stop the run before training ("error"). `max_pixels`: the
    largest image (width x height) the loaders accept, read from each file's header before any
    decoding (a 440 KB PNG can declare 12,000 x 12,000 pixels, gigabytes once decoded): a larger
    one is skipped and listed with its size in `data_report.json`, and the pipeline's decoder
    refuses it too. Raise it to train on bigger images (memory grows with it). `cache_mb`: the
    training images of a folder, list or TFDS source are decoded and resized once per run and
    kept in memory (uint8 at the model's side, before augmentation, which stays per step) when
    they fit in this many MB twice over (N x side x side x 3 bytes, held as an array and as the
    pipeline's tensor); above it, or with
    `augmentation=random_resized_crop` (which crops each image at its own size), they are
    decoded from their files at every step, in memory that does not grow with the set. 0 = always
    from the files. The run's log says which.
    """

    source: Literal["default", "folder", "tfds", "list"] = "default"
    path: Optional[str] = None
    image_root: Optional[str] = None
    tfds_name: Optional[str] = None
    tfds_split: str = "train+test"
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    test_classes: tuple[int, ...] = ()
    test_fraction: float = 0.0
    split_seed: int = 0
    protocol: Literal["class_disjoint", "database_query"] = "class_disjoint"
    augment: bool = True
    augmentation: Literal["shift", "random_resized_crop"] = "shift"
    flip: bool = False
    erase_prob: float = 0.0
    on_bad_file: Literal["skip", "error"] = "skip"
    max_pixels: int = DEFAULT_MAX_PIXELS
    cache_mb: int = 1024


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How training batches are drawn (`tfsim.data.samplers`), reproducibly from `seed`.

    `kind`: "pk" (default): `classes_per_batch` (P, default 6) classes x
    `examples_per_class` (K, default 10) images, label-contiguous, for mining losses
    (`small_classes`: a class with fewer than K images is sampled with replacement,
    "replace", the default, or left out, "skip"; both counted in the run's
    data_report.json); "random": `batch_size` (default 60) images drawn uniformly (for proxy losses, or mining
    losses as in tfa's examples); "epoch": `batch_size` (default 60) images, every training
    image once per epoch (a seeded permutation per epoch; `train.steps_per_epoch=0` = one
    whole pass); "triplets": explicit (query, positive, negative) rows,
    `batch_size` // 3 triplets per batch (default 60), `triplets_per_query` (default 4)
    triplets sharing each query (for the triplet_margin loss). Each kind's options are
    null until `resolve()` fills in its defaults; setting another kind's option is an error,
    and changing `kind` starts the new kind from its defaults.
    """

    classes_per_batch: Optional[int] = None
    examples_per_class: Optional[int] = None
    seed: int = 0
    kind: Literal["pk", "random", "epoch", "triplets"] = "pk"
    batch_size: Optional[int] = None
    triplets_per_query: Optional[int] = None
    small_classes: Optional[Literal["replace", "skip"]] = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Backbone + embedding head. `weights`: null, "imagenet" or a local weights file.

    `center_crop`: how evaluation, the index and the exported model see an image: stretched
    to `image_size / center_crop` and its central `image_size` square kept (0.875 = "resize
    256, centre crop 224"); 1 (default) = stretched to `image_size`.
    `layer_norm`: layer normalisation without affine parameters on the pooled features,
    before the projection (Zhai & Wu 2019's recipe for normalized softmax).
    `width`, `blocks_per_stage`, `zero_init_residual`: options of the small ResNet (defaults
    32, 1, false; `zero_init_residual` starts each residual branch's last BatchNorm scale at
    0, a trick for very deep networks trained long, see `tfsim.models.backbones`). resnet50
    takes none: setting one with it is an error, and changing `backbone` starts the new
    backbone from its defaults. Null until `resolve()` fills in the backbone's defaults.
    `freeze_batchnorm`: the backbone's BatchNorm layers keep their (pretrained) statistics and
    scales: not trained, and run in inference mode (usual when fine-tuning small batches).
    `head`: "embedding" (projection to `embedding_dim`, L2-normalised) or "hash" (learning to
    hash: projection to `code_bits` tanh outputs, the relaxed binary codes; the export also
    returns them packed, `code_bits / 8` bytes per image, and the run reports Hamming mAP;
    needs `whitening.enabled=false`). A batch loss sees the codes divided by sqrt(code_bits),
    so `loss.margin` means the same at every code length as for the embedding head
    (`tfsim.losses.quantization.HashingLoss`); a proxy loss sees their cosines to its proxies.
    """

    backbone: str = "small_resnet"
    weights: Optional[str] = None
    image_size: int = 28
    embedding_dim: int = 128
    pooling: Literal["avg", "max", "flatten"] = "avg"
    center_crop: float = 1.0
    width: Optional[int] = None
    blocks_per_stage: Optional[int] = None
    layer_norm: bool = False
    zero_init_residual: Optional[bool] = None
    freeze_batchnorm: bool = False
    head: Literal["embedding", "hash"] = "embedding"
    code_bits: int = 32


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The metric loss, by registered name (`tfsim.losses.LOSSES`), and its arguments.

    One section holds the union of all losses' arguments (one flat namespace for
    `--set loss.KEY=VALUE`); setting an argument the chosen loss does not take (e.g.
    `loss.temperature` with triplet_semihard) is an error naming the ones it takes
    (`loss_args()` is what reaches the loss). `null` means "the loss's own default" (e.g. alpha
    is 2 for multi_similarity and binomial_deviance, beta 50 for one and 0.5 for the other).
    Arguments belong to the loss they were set for: an override or config file that changes
    `loss.name` starts that loss from its own defaults, keeping only the arguments it sets
    itself (and `cross_replica`). So
    `--set loss.name=lifted_struct` on the default preset (semi-hard, margin 0.5) gives
    lifted_struct's own margin 1.0, not 0.5.

    `cross_replica`: under MirroredStrategy, mine each replica's anchors against the
    global batch (exact single-device loss) instead of within the replica's slice.
    `memory_size` > 0: a cross-batch memory (XBM, `tfsim.losses.memory`): a mining loss of
    labelled embeddings mines each batch against the batch plus the embeddings of the last
    `memory_size` training images (no gradient through them; every replica holds the same
    memory of global batches, so a step equals the one-device step). `memory_warmup_steps`:
    steps trained on the batch alone first (the memory fills meanwhile).
    `proxy_lr_multiplier`: learning-rate multiplier of the class proxies of proxy losses
    (normalized_softmax, proxy_nca). `quantization_weight`: with `model.head=hash`, adds
    `weight * mean((|u| - 1)^2)` over the relaxed codes u, pushing them to +-1 (0 = none).
    """

    name: str = "triplet_semihard"
    margin: Optional[float] = None
    distance_metric: Optional[Literal["L2", "squared-L2", "angular"]] = None
    soft: Optional[bool] = None
    pos_margin: Optional[float] = None
    neg_margin: Optional[float] = None
    alpha: Optional[float] = None
    beta: Optional[float] = None
    base: Optional[float] = None
    epsilon: Optional[float] = None
    cost: Optional[float] = None
    scale: Optional[float] = None
    temperature: Optional[float] = None
    gamma: Optional[float] = None
    triplets: Optional[Literal["semihard", "hard", "all", "easy"]] = None
    cross_replica: bool = False
    proxy_lr_multiplier: float = 1.0
    quantization_weight: float = 0.0
    memory_size: int = 0
    memory_warmup_steps: int = 0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation (`tfsim.training.optimizers`).

    `optimizer`: "adam", or "sgd" with Nesterov `momentum`; `weight_decay`: Keras's decoupled
    weight decay (0 = none). `lr_schedule`: "constant", "cosine" (to 0 over the run) or
    "inverse_sqrt" (1/sqrt(step) after the warm-up), each after a linear warm-up of
    `warmup_steps`. `head_lr_multiplier`: the learning rate of the embedding head (the
    projection) over the backbone's, for a freshly initialised head on pretrained weights.
    `precision`: "float32", or Keras mixed precision "mixed_float16" / "mixed_bfloat16"
    (the embedding's normalisation, the losses and the whitening stay float32).
    `jit_compile`: XLA-compile the training step. `checkpoint_every_steps`: also checkpoint
    every that many steps within an epoch (0 = at epoch ends only), so a killed run loses at
    most that many steps and resumes on the same batches.
    `select_best`: keep the epoch whose `select_metric` (`map@r`, `r_precision` or `recall@K`)
    is best on validation classes carved from the training classes (a seeded `val_fraction`
    of them, never the test classes; the model trains on the others), evaluated each epoch;
    `patience` > 0 also stops training after that many epochs without improvement. The choice
    is recorded in metrics.json ("selected") and `checkpoints/best.json`.
    `strategy`: "auto" (Mirrored when >1 GPU), "default", "mirrored", or "multi_worker"
    (MultiWorkerMirroredStrategy over the hosts of TF_CONFIG; `tfsim.training.distributed`). `steps_per_epoch`:
    0 = one pass over the training images (with `sampler.kind=epoch` only).
    """

    epochs: int = 10
    steps_per_epoch: int = 100
    learning_rate: float = 1e-3
    lr_schedule: Literal["constant", "cosine", "inverse_sqrt"] = "cosine"
    warmup_steps: int = 0
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    head_lr_multiplier: float = 1.0
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    jit_compile: bool = False
    checkpoint_every_steps: int = 0
    select_best: bool = False
    select_metric: str = "map@r"
    patience: int = 0
    val_fraction: float = 0.25
    seed: int = 0
    strategy: Literal["auto", "default", "mirrored", "multi_worker"] = "auto"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Retrieval evaluation on the held-out classes.

    `baselines`: also score the untrained network and raw pixels on the same images
    (`baselines.json`, shown below the trained model's row); the tune command's trials
    turn it off.
    """

    recall_ks: tuple[int, ...] = (1, 2, 4, 8)
    every_epoch: bool = True
    similarity: Literal["cosine", "dot", "L2", "squared-L2"] = "cosine"
    batch_size: int = 256
    baselines: bool = True


@dataclasses.dataclass(frozen=True)
class WhiteningConfig:
    """PCA whitening of the embeddings, fitted on the training images after training
    (`tfsim.models.whitening`) and part of the evaluated, exported and indexed model.

    `enabled`: true, false, or "auto" (default): chosen after training on classes the whitening
    is not fitted on, never the test classes (`tfsim.training.stages.choose_whitening`): no
    whitening or each of `auto_powers` (the preset's `power` among them), scored by Recall@1
    on validation classes: those `train.select_best` holds out of training when it does, else
    folds of the training classes (each fold's whitening fitted on the other classes). The
    preset's `power` is kept unless another candidate's mean beats it by more than
    `auto_margin`. Fewer than 4 training classes: the preset's `power`, said in the log.
    metrics.json's "whitening" says what was chosen and on what figures.
    `power` in [0, 1]: eigenvalue exponent (0 = PCA only, 1 = full whitening, 0.5 =
    square-root whitening). `dims`: principal axes kept (0 = all, so the exported embedding
    keeps `model.embedding_dim`). `max_images`: training images embedded to fit it (a
    seeded random subset when there are more).
    """

    enabled: Literal[True, False, "auto"] = "auto"
    power: float = 0.5
    dims: int = 0
    max_images: int = 20000
    auto_powers: tuple[float, ...] = (0.25, 0.5)
    auto_margin: float = 0.005


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """SavedModel export to `<root>/<name or run.name>/<version>/`.

    `retrieval`: also write retrieval SavedModels of the exported index (image bytes in, the
    `index.num_neighbors` nearest held-out images out; `tfsim.export.retrieval`): "exact"
    (stock TF Serving) and/or "scann" (TF Serving with ScaNN's ops), to `<root>/<name>_<kind>/`;
    with `model.head=hash`, "hamming" (exact Hamming search of the packed codes, stock TF Serving).

    `max_pixels`: the largest image (width x height, read from its header before decoding) the
    export's `serving_default` decodes; a larger one is answered with InvalidArgumentError naming
    its size and the limit, in bounded memory. Recorded in export.json. Decoding costs about 11
    bytes per pixel at its peak, one image of a request at a time: the default (50 MP, the
    largest photos phones and cameras take) bounds a request to about 0.5 GB.

    `calibration`: a similarity threshold for "same class?" decisions, calibrated after training
    on validation classes held out of training (those `train.select_best=true` carves from the
    training classes: `train.val_fraction`, seeded by `train.seed`), each validation image paired
    with its `index.num_neighbors` nearest (`tfsim.calibration`). "auto" (default): the
    "precision" threshold when `train.select_best` holds validation classes out, else none (a
    threshold fitted on classes the model trained on overstates its precision on new ones);
    "precision": the lowest threshold reaching `calibration_precision` on those pairs; "f1": the
    best F1 ("precision" and "f1" need `train.select_best=true`, and refuse to train with fewer
    than 3 validation classes); "off": none, nothing recorded. The threshold, its validation
    precision and recall, the share of validation pairs already of one class, and the flag's
    precision and recall on the test classes' pairs go to export.json and metrics.json
    ("calibration"); the exact and ScaNN retrieval SavedModels then return `match` (score >=
    threshold) beside each neighbour. Exported uncalibrated, with the reason logged and recorded
    (`"threshold": null`): no held-out validation classes, fewer than 3, a hashing model, a
    target no threshold reaches, or pairs already of one class as often as the target (every
    pair would match).
    """

    enabled: bool = True
    root: str = "saved_models"
    name: Optional[str] = None
    retrieval: tuple[Literal["exact", "scann", "hamming"], ...] = ()
    max_pixels: int = DEFAULT_MAX_PIXELS
    calibration: Literal["auto", "precision", "f1", "off"] = "auto"
    calibration_precision: float = 0.9


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """ScaNN index (`tfsim.index.float_search.build`) of the evaluation gallery, and the defaults
    of the index command.

    Galleries under `brute_force_below` items are searched exhaustively (exact). Larger ones get
    a k-means tree of `num_leaves` leaves (0 = 2 sqrt(G)) with anisotropic quantisation, and
    tune themselves: the leaves searched and the re-scoring depth (`num_leaves_to_search`,
    `reorder`; 0 = tuned) are the fastest that reach recall@`num_neighbors` >=
    `target_recall` against exact search on a sample of gallery vectors; index.json records
    what was chosen and measured.

    A hashing model's binary codes (`model.head=hash`) are searched exactly by Hamming
    distance under `hamming_exact_below` codes (faiss's exact binary search: about 2,000
    queries/s per core over 1M 64-bit codes); larger galleries get an inverted file whose
    lists searched are tuned to `target_recall` in the same way (`tfsim.index.hamming`).
    """

    enabled: bool = True
    num_neighbors: int = 10
    target_recall: float = 0.95
    brute_force_below: int = 20_000
    num_leaves: int = 0
    num_leaves_to_search: int = 0
    reorder: int = 0
    dims_per_block: int = 2
    anisotropic_threshold: float = 0.2
    hamming_exact_below: int = 10_000_000


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """Hyper-parameter search (`python -m tfsim.pipelines.tune`, `tfsim.tuning`);
    `train` ignores this section.

    `name`: the search's folder `<run.root>/tune/<name>/` (null = `run.name`).
    `objective`: the metrics key maximised, scored on validation classes: `recall@K` (K in
    `eval.recall_ks`), `map@r` or `r_precision`. `tuner`: keras-tuner's oracle: "grid"
    (every combination), "random", "bayesian" or "hyperband" (the grid values are the search
    space of each). `max_trials`: 0 = as many as the grid has combinations.
    Validation classes are carved from the training classes, never from `data.test_classes`:
    `val_classes` (label indices of training classes) if given, else a seeded random
    `val_fraction` of the training classes (at least one; at least two are left to train on).
    `seed`: which classes `val_fraction` picks, and the random/bayesian oracles' seed.
    """

    name: Optional[str] = None
    objective: str = "map@r"
    tuner: Literal["grid", "random", "bayesian", "hyperband"] = "grid"
    max_trials: int = 0
    val_fraction: float = 0.25
    val_classes: tuple[int, ...] = ()
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run, one section per pipeline stage."""

    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    sampler: SamplerConfig = SamplerConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    whitening: WhiteningConfig = WhiteningConfig()
    export: ExportConfig = ExportConfig()
    index: IndexConfig = IndexConfig()
    tune: TuneConfig = TuneConfig()


# Data keys that belong to one source: reset when `data.source` changes (see DataConfig).
SOURCE_KEYS = ("path", "image_root", "protocol", "test_fraction", "split_seed", "tfds_name", "tfds_split", "data_dir",
               "manual_dir", "test_classes", "on_bad_file")
# The sampler kinds' options (which kind takes which: `tfsim.options.SAMPLER_OPTIONS`).
SAMPLER_KEYS = ("classes_per_batch", "examples_per_class", "batch_size", "triplets_per_query", "small_classes")
# The backbones' options (which backbone takes which: `tfsim.options.BACKBONE_OPTIONS`).
BACKBONE_KEYS = ("width", "blocks_per_stage", "zero_init_residual")
# The loss's arguments: every LossConfig key but the name and those applied outside the loss.
_OUTSIDE_THE_LOSS = ("proxy_lr_multiplier", "quantization_weight", "memory_size", "memory_warmup_steps")
LOSS_KEYS = tuple(f.name for f in dataclasses.fields(LossConfig) if f.name not in ("name", *_OUTSIDE_THE_LOSS))

# Sections with one variant of several: section -> (the tag, the keys that belong to one variant).
# Changing the tag resets those keys to their defaults.
VARIANT_KEYS = {
    LossConfig: ("name", tuple(f.name for f in dataclasses.fields(LossConfig)
                               if f.name not in ("name", "cross_replica", "quantization_weight", "memory_size",
                                                 "memory_warmup_steps"))),
    DataConfig: ("source", SOURCE_KEYS),
    SamplerConfig: ("kind", SAMPLER_KEYS),
    ModelConfig: ("backbone", BACKBONE_KEYS),
}


def loss_args(loss: LossConfig) -> dict:
    """The loss constructor's arguments from the config: those set (not null), without the loss
    name and those applied outside the loss (`proxy_lr_multiplier`, `quantization_weight`, the memory);
    `cross_replica` only when true."""
    return {k: getattr(loss, k) for k in LOSS_KEYS
            if getattr(loss, k) is not None and not (k == "cross_replica" and getattr(loss, k) is False)}


def backbone_args(model: ModelConfig) -> dict:
    """The backbone options that are set (not null), for `build_embedding_model(**...)`."""
    return {k: getattr(model, k) for k in BACKBONE_KEYS if getattr(model, k) is not None}


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (JSON-ready) of a config."""
    return dataclasses.asdict(cfg)

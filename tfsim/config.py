"""Typed configuration: frozen dataclasses, named presets, overrides and validation.

A run is described by one `Config`, built from a preset (a JSON file shipped in
`tfsim/presets/`, named without its suffix: `default`, `cars196_resnet50`, ...; or the path
of any JSON file) plus `--set section.key=value` overrides, then checked by `validate()`
before any work starts, and before TensorFlow is imported (this module reads the registries
through the TensorFlow-free `tfsim.options`), so a command reports a mistake at once. The
resolved config (`resolve()`: the run's name filled in) is written next to the run as
`config.json`.

`Config()` itself is neutral: it names no dataset's split or run. Dataset choices (which
classes the shipped Fashion-MNIST subset holds out, the cars/birds set-ups) live in the
presets. A JSON config file is a partial nested dict over the preset it names as `base`
("default" when absent; null for `Config()`): `{"base": "default", "model":
{"embedding_dim": 128}}`, with an optional one-line "description" (what `--list-configs`
prints for a preset). Unknown sections or keys and wrongly typed values are errors that name
the key; an unknown preset name suggests the shipped presets close to it.

Some settings are one variant of several, and the arguments of one variant do not carry
over to another: an override or file that changes `loss.name` starts that loss from its
own defaults (see `LossConfig`), and one that changes `data.source` starts that source
from its own defaults (see `DataConfig`).

Example:
    >>> cfg = load("default", ["train.epochs=2", "model.embedding_dim=32"])
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

# TensorFlow-free imports only: a config is loaded and validated before TensorFlow is (about 6 s), so
# a mistake is reported at once. The registries are read through `tfsim.options`.
from tfsim import options
from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.errors import UserInputError, config_keys


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
    refuses it too. Raise it to train on bigger images (memory grows with it).
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
    (`loss_args()` is what reaches the loss). `null` means "the loss's own default" (e.g. alpha is 2 for multi_similarity and binomial_deviance,
    beta 50 for one and 0.5 for the other). Arguments belong to the loss they were set
    for: an override or config file that changes `loss.name` starts that loss from its
    own defaults, keeping only the arguments it sets itself (and `cross_replica`). So
    `--set loss.name=lifted_struct` on the default preset (semi-hard, margin 0.5) gives
    lifted_struct's own margin 1.0, not 0.5.

    `cross_replica`: under MirroredStrategy, mine each replica's anchors against the
    global batch (exact single-device loss) instead of within the replica's slice.
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

    `power` in [0, 1]: eigenvalue exponent (0 = PCA only, 1 = full whitening, 0.5 =
    square-root whitening). `dims`: principal axes kept (0 = all, so the exported embedding
    keeps `model.embedding_dim`). `max_images`: training images embedded to fit it (a
    seeded random subset when there are more).
    """

    enabled: bool = True
    power: float = 0.5
    dims: int = 0
    max_images: int = 20000


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
    """

    enabled: bool = True
    root: str = "saved_models"
    name: Optional[str] = None
    retrieval: tuple[Literal["exact", "scann", "hamming"], ...] = ()
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """ScaNN index (`tfsim.index.scann_index.build`) of the evaluation gallery, and the defaults
    of the index command.

    Galleries under `brute_force_below` items are searched exhaustively (exact). Larger ones get
    a k-means tree of `num_leaves` leaves (0 = 2 sqrt(G)) with anisotropic quantisation, and
    tune themselves: the leaves searched and the re-scoring depth (`num_leaves_to_search`,
    `reorder`; 0 = tuned) are the fastest that reach recall@`num_neighbors` >=
    `target_recall` against exact search on a sample of gallery vectors; index.json records
    what was chosen and measured.
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


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """Hyper-parameter search (`python -m tfsim.pipelines.tune`, `tfsim.training.tuning`);
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


# Presets shipped with the package. default.json: the shipped Fashion-MNIST subset with its
# held-out classes 2, 4, 5, 7, and the semi-hard triplet loss at margin 0.5 (tfa's default is
# 1.0; 0.5 was measured best on the shipped data among 0.05-1.0).
PRESET_DIR = Path(__file__).resolve().parent / "presets"

# Data keys that belong to one source (reset when `data.source` changes, see DataConfig).
_SOURCE_KEYS = ("path", "image_root", "protocol", "test_fraction", "split_seed", "tfds_name", "tfds_split", "data_dir", "manual_dir", "test_classes", "on_bad_file")
# Each sampler kind's options and their defaults are the samplers' (`samplers.KIND_OPTIONS`, read
# without TensorFlow from `tfsim.options`).
SAMPLER_OPTIONS = options.SAMPLER_OPTIONS
_SAMPLER_KEYS = ("classes_per_batch", "examples_per_class", "batch_size", "triplets_per_query", "small_classes")
# Backbone options in ModelConfig; which ones a backbone takes is its builder's signature
# (`tfsim.models.backbones.backbone_arguments`), their defaults its builder's defaults
# (`tfsim.options.BACKBONE_OPTIONS`).
_BACKBONE_KEYS = ("width", "blocks_per_stage", "zero_init_residual")


def presets() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def preset_descriptions() -> dict[str, str]:
    """Each shipped preset's one-line `description` (from its JSON file), by name."""
    return {name: str(json.loads((PRESET_DIR / f"{name}.json").read_text()).get("description", ""))
            for name in presets()}


def _close_presets(name: str) -> list[str]:
    """Up to 3 shipped presets a mistyped `name` may have meant: those containing it (or contained in
    it, e.g. "default.json"), then those `difflib` finds close."""
    names, low = presets(), name.lower()
    close = [n for n in names if len(low) >= 3 and (low in n or n in low)]
    close += difflib.get_close_matches(low, names, n=3, cutoff=0.6)
    return list(dict.fromkeys(close))[:3]


def loss_args(loss: LossConfig) -> dict:
    """The loss constructor's arguments from the config: those set (not null), without the loss
    name and the optimiser's `proxy_lr_multiplier`; `cross_replica` only when true."""
    skip = ("name", "proxy_lr_multiplier", "quantization_weight")
    return {k: v for k, v in dataclasses.asdict(loss).items()
            if k not in skip and v is not None and not (k == "cross_replica" and v is False)}


def backbone_args(model: ModelConfig) -> dict:
    """The backbone options that are set (not null), for `build_embedding_model(**...)`."""
    return {k: getattr(model, k) for k in _BACKBONE_KEYS if getattr(model, k) is not None}


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (JSON-ready) of a config."""
    return dataclasses.asdict(cfg)


# Sections with one variant of several, tagged by a key: changing the tag resets the keys
# that belong to the variant (the loss's arguments, the source's split, ...).
_VARIANTS = {
    LossConfig: ("name", tuple(f.name for f in dataclasses.fields(LossConfig)
                               if f.name not in ("name", "cross_replica", "quantization_weight"))),
    DataConfig: ("source", _SOURCE_KEYS),
    SamplerConfig: ("kind", _SAMPLER_KEYS),
    ModelConfig: ("backbone", _BACKBONE_KEYS),
}


def _coerce(value: Any, hint: Any, key: str, from_string: bool) -> Any:
    """Converts/checks `value` against the type `hint`; raises UserInputError naming `key`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail(expected: str):
        raise UserInputError(
            f"Invalid value for `{key}`: expected {expected}. Received: {key}={value!r}")

    if origin is typing.Union:  # Optional[X]
        if value is None or (from_string and str(value).lower() in ("null", "none")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, key, from_string)
    if origin is Literal:
        if value not in args:
            fail(f"one of {list(args)}")
        return value
    if origin is tuple:
        if from_string:
            value = [v for v in str(value).split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            fail("a list (comma-separated on the command line)")
        return tuple(_coerce(v, args[0], key, from_string) for v in value)
    if hint is bool:
        if from_string and str(value).lower() in ("true", "1", "yes"):
            return True
        if from_string and str(value).lower() in ("false", "0", "no"):
            return False
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if hint in (int, float):
        expected = "an integer" if hint is int else "a finite number"
        if from_string:
            try:
                number = hint(str(value))
            except ValueError:
                fail(expected)
        else:
            allowed = (int,) if hint is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, allowed):
                fail(expected)
            number = hint(value)
        if not math.isfinite(number):  # inf / nan would train on NaN to the end
            fail(expected)
        return number
    if hint is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    raise TypeError(f"Unsupported config type {hint!r} for {key}")  # a bug in this module


def _replace(section: Any, updates: dict, prefix: str, from_string: bool) -> Any:
    hints = typing.get_type_hints(type(section))
    variant = _VARIANTS.get(type(section))
    if variant is not None and updates.get(variant[0], getattr(section, variant[0])) != getattr(section, variant[0]):
        # Another loss / dataset / sampler / backbone: its own keys start from their defaults.
        fresh = type(section)()
        section = dataclasses.replace(section, **{k: getattr(fresh, k) for k in variant[1]})
    changes = {}
    for key, value in updates.items():
        if key not in hints:
            raise UserInputError(
                f"Unknown config key `{prefix}{key}`: expected one of "
                f"{[prefix + k for k in hints]}. Check the spelling.")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise UserInputError(
                    f"Invalid value for `{prefix}{key}`: expected a section (a JSON object) with keys "
                    f"{list(typing.get_type_hints(hints[key]))}. Received: {value!r}")
            changes[key] = _replace(getattr(section, key), value, f"{prefix}{key}.", from_string)
        else:
            changes[key] = _coerce(value, hints[key], prefix + key, from_string)
    return dataclasses.replace(section, **changes)


def from_dict(updates: dict, base: Optional[Config] = None) -> Config:
    """`base` (default: the default preset) with the nested `updates` applied (typed values)."""
    return _replace(base or load_preset("default"), updates, "", from_string=False)


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Applies `section.key=value` strings (values parsed by the key's type), all at once.

    All overrides form one update, so their order does not matter (`loss.margin=0.3`
    before or after `loss.name=triplet_hard` gives the same config); a key given twice
    keeps its last value.
    """
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise UserInputError(
                f"Invalid override {item!r}: expected the form section.key=value, e.g. train.epochs=3.")
        key, value = item.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserInputError(f"Invalid override {item!r}: `{part}` is set both as a value and a section.")
        node[parts[-1]] = value
    return _replace(cfg, nested, "", from_string=True) if nested else cfg


def load_preset(name_or_file: str, _chain: tuple = ()) -> Config:
    """A preset shipped in `tfsim/presets/` (by name), or a JSON config file (by path).

    `_chain`: the `(name, resolved path)` of the files whose `base` led here, to name a cycle.
    """
    shipped = PRESET_DIR / f"{name_or_file}.json"
    path = shipped if "/" not in name_or_file and shipped.is_file() else Path(name_or_file)
    if path.is_file() and any(path.resolve() == seen for _, seen in _chain):
        names = [name for name, _ in _chain] + [name_or_file]
        raise UserInputError(
            f"Config files name each other as `base`: {' -> '.join(names)}. Expected a chain of `base` "
            "files that ends at a preset or at \"base\": null; remove one of these `base` entries.")
    if not path.is_file():
        close = _close_presets(name_or_file)
        listed = ", ".join(close[:-1]) + " or " + close[-1] if len(close) > 1 else "".join(close)
        meant = f" (did you mean {listed}?)" if close else ""
        raise UserInputError(
            f"Unknown config {name_or_file!r}{meant}: expected a preset name {presets()} or the path of a JSON "
            "config file (--list-configs describes the presets).")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"Config file {str(path)!r} is not valid JSON: {err}.") from None
    if not isinstance(data, dict):
        raise UserInputError(f"Config file {str(path)!r} must hold a JSON object of sections.")
    description = data.pop("description", None)  # one line for --list-configs; not inherited
    if description is not None and not isinstance(description, str):
        raise UserInputError(f"Invalid value for `description` in {str(path)!r}: expected a string (one line saying "
                             f"what the config is for). Received: description={description!r}")
    base = data.pop("base", "default")
    if base is not None and not isinstance(base, str):
        raise UserInputError(f"Invalid value for `base` in {str(path)!r}: expected a preset name, the path of a "
                             f"JSON config file, or null. Received: base={base!r}")
    if base == name_or_file or (base is not None and (PRESET_DIR / f"{base}.json") == path):
        raise UserInputError(f"Config file {str(path)!r} names itself as its base.")
    chain = (*_chain, (name_or_file, path.resolve()))
    return _replace(Config() if base is None else load_preset(base, chain), data, "", from_string=False)


def resolve(cfg: Config) -> Config:
    """The config with what depends on other keys filled in: `run.name` from the data, the
    sampler kind's and the backbone's options that are null from their defaults."""
    s = cfg.sampler
    fill = {k: v for k, v in SAMPLER_OPTIONS[s.kind].items() if getattr(s, k) is None}
    if fill:
        cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(s, **fill))
    if cfg.model.backbone in options.BACKBONE_OPTIONS:
        defaults = options.BACKBONE_OPTIONS[cfg.model.backbone]
        fill = {k: defaults[k] for k in _BACKBONE_KEYS if k in defaults and getattr(cfg.model, k) is None}
        if fill:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **fill))
    if cfg.run.name is not None:
        return cfg
    d = cfg.data
    if d.source == "folder" and d.path:
        name = Path(d.path).resolve().name or "folder"
    elif d.source == "list" and d.path:
        from tfsim.data.formats import dataset_name
        name = dataset_name(d.path)
    elif d.source == "tfds" and d.tfds_name:
        name = d.tfds_name.split(":")[0].replace("/", "_")
    else:
        name = "fashion_mnist_small"
    # A name taken from the data is one folder name too (`folder_name_problem`): no hidden run.
    name = name.replace("\\", "_").lstrip(".") or "data"
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=name))


def load(name_or_file: str = "default", overrides: Sequence[str] = (), resolved: bool = True) -> Config:
    """Preset + overrides, validated and (unless `resolved` is False) resolved.

    The train and tune commands take the config unresolved: what it leaves null (e.g. the P x K
    sampler's sizes) is then filled in from the data, not from fixed defaults.
    """
    cfg = apply_overrides(load_preset(name_or_file), overrides)
    validate(cfg)
    return resolve(cfg) if resolved else cfg


_ONE_FOLDER = "not empty, no '/' or '\\', not starting with '.', so that it stays inside the root"


def folder_name_problem(name: str) -> Optional[str]:
    """Why `name` cannot be one folder under a root (e.g. `run.name` under `run.root`), or None if it can.

    A name is one path component: not empty, no '/' or '\\' (a separator on some system), not '.' or '..'
    (they climb out of the root), no leading '.' (hidden; tfsim's own temporary and lock files start
    with one), no NUL.
    """
    if not isinstance(name, str) or name == "":
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if name.startswith("."):
        return "it starts with '.'"
    if "\0" in name:
        return "it contains a NUL character"
    return None


def validate(cfg: Config) -> None:
    """Checks what types alone cannot; raises UserInputError with the fix."""

    def need(ok: bool, key: str, expected: str, value: Any):
        if not ok:
            raise UserInputError(f"Invalid value for `{key}`: expected {expected}. Received: {key}={value!r}")

    s, m, t = cfg.sampler, cfg.model, cfg.train
    for key in _SAMPLER_KEYS:
        need(getattr(s, key) is None or key in SAMPLER_OPTIONS[s.kind], f"sampler.{key}",
             f"null for sampler.kind={s.kind!r}, which takes {list(SAMPLER_OPTIONS[s.kind])}", getattr(s, key))
    # The values of the sampler's options are checked as the samplers check them (`samplers.check_options`).
    with config_keys(**{k: f"sampler.{k}" for k in _SAMPLER_KEYS}):
        options.check_sampler_options(s.kind, **{k: getattr(s, k) for k in _SAMPLER_KEYS})
    need(m.backbone in options.BACKBONE_OPTIONS, "model.backbone", f"one of {sorted(options.BACKBONE_OPTIONS)}",
         m.backbone)
    takes = list(options.BACKBONE_OPTIONS[m.backbone])
    for key, value in backbone_args(m).items():
        need(key in takes, f"model.{key}", f"null for backbone {m.backbone!r}, which takes {takes}", value)
    need(m.image_size >= 8, "model.image_size", "an integer >= 8 (pixels)", m.image_size)
    need(0.25 <= m.center_crop <= 1, "model.center_crop", "a fraction of the side in [0.25, 1]", m.center_crop)
    need(cfg.data.augment or cfg.data.augmentation == "shift", "data.augmentation",
         "'shift' when data.augment=false (cropping is part of the augmentation)", cfg.data.augmentation)
    need(m.embedding_dim >= 2, "model.embedding_dim", "an integer >= 2", m.embedding_dim)
    need(m.width is None or m.width >= 4, "model.width", "an integer >= 4", m.width)
    need(m.blocks_per_stage is None or m.blocks_per_stage >= 1, "model.blocks_per_stage", "an integer >= 1",
         m.blocks_per_stage)
    need(cfg.loss.name in options.LOSS_OPTIONS, "loss.name", f"one of {sorted(options.LOSS_OPTIONS)}", cfg.loss.name)
    lc = cfg.loss
    loss_options = options.LOSS_OPTIONS[lc.name]
    takes = list(loss_options.arguments)
    for key in loss_args(lc):
        need(key in takes or key == "cross_replica", f"loss.{key}",
             f"null for loss {lc.name!r}, which takes {takes} (set it only with a loss that has it)",
             getattr(lc, key))
    # The values of the loss's arguments are checked as the loss itself checks them (its constructor).
    with config_keys(**{k: f"loss.{k}" for k in takes}):
        options.check_loss_arguments(lc.name, **{k: v for k, v in loss_args(lc).items() if k in takes})
    need(0 <= cfg.data.erase_prob <= 1, "data.erase_prob", "a probability in [0, 1]", cfg.data.erase_prob)
    need(cfg.data.max_pixels >= 1, "data.max_pixels", "an integer >= 1 (width x height of the largest image the "
         f"loaders decode; default {DEFAULT_MAX_PIXELS})", cfg.data.max_pixels)
    w = cfg.whitening
    need(0 <= w.power <= 1, "whitening.power", "a number in [0, 1] (0 = PCA only, 1 = full whitening)", w.power)
    need(0 <= w.dims <= m.embedding_dim, "whitening.dims",
         f"0 (all axes) or 1..model.embedding_dim={m.embedding_dim}", w.dims)
    need(w.max_images >= 2, "whitening.max_images", "an integer >= 2", w.max_images)
    need(cfg.data.augment or cfg.data.erase_prob == 0, "data.erase_prob",
         "0 when data.augment=false (erasing is part of the augmentation)", cfg.data.erase_prob)
    need(cfg.data.augment or not cfg.data.flip, "data.flip",
         "false when data.augment=false (flipping is part of the augmentation)", cfg.data.flip)
    need(lc.quantization_weight >= 0, "loss.quantization_weight", "a number >= 0 (0 = none)", lc.quantization_weight)
    need(lc.quantization_weight == 0 or cfg.model.head == "hash", "loss.quantization_weight",
         "0 unless model.head=hash (it pushes the hash codes to +-1)", lc.quantization_weight)
    need(cfg.model.code_bits >= 8 and cfg.model.code_bits % 8 == 0, "model.code_bits",
         "a multiple of 8 (codes are packed 8 bits per byte), e.g. 16, 32, 48 or 64", cfg.model.code_bits)
    need(cfg.model.head != "hash" or not cfg.whitening.enabled, "whitening.enabled",
         "false with model.head=hash (a whitening would rotate the codes; set whitening.enabled=false)",
         cfg.whitening.enabled)
    need(lc.proxy_lr_multiplier > 0, "loss.proxy_lr_multiplier", "a number > 0", lc.proxy_lr_multiplier)
    need(not lc.cross_replica or loss_options.cross_replica, "loss.cross_replica",
         f"false for loss {lc.name!r}, which has no cross-replica mode (only tfsim's batch losses do)",
         lc.cross_replica)
    kind = loss_options.input_kind
    need(kind != "triplets" or s.kind == "triplets", "sampler.kind",
         f"'triplets' for loss {lc.name!r}, which takes explicit (query, positive, negative) rows", s.kind)
    need(s.kind != "triplets" or kind == "triplets", "sampler.kind",
         f"'pk' or 'random' for loss {lc.name!r} (only triplet_margin takes explicit triplets)", s.kind)
    need(lc.quantization_weight == 0 or kind != "proxy_similarities", "loss.quantization_weight",
         f"0 with loss {lc.name!r}, a proxy loss (it sees the codes' cosines to the class proxies, not the "
         "codes; use a batch loss such as triplet_semihard)", lc.quantization_weight)

    need(t.epochs >= 1, "train.epochs", "an integer >= 1", t.epochs)
    need(t.steps_per_epoch >= 1 or (t.steps_per_epoch == 0 and s.kind == "epoch"), "train.steps_per_epoch",
         "an integer >= 1 (0, one whole pass, only with sampler.kind=epoch)", t.steps_per_epoch)
    need(t.learning_rate > 0, "train.learning_rate", "a number > 0", t.learning_rate)
    need(len(cfg.eval.recall_ks) > 0 and all(k >= 1 for k in cfg.eval.recall_ks), "eval.recall_ks",
         "a non-empty list of integers >= 1", cfg.eval.recall_ks)
    need(cfg.data.source != "folder" or bool(cfg.data.path), "data.path",
         "the image folder when data.source=folder", cfg.data.path)
    need(cfg.data.source != "list" or bool(cfg.data.path), "data.path",
         "the list file when data.source=list", cfg.data.path)
    need(cfg.data.source == "list" or cfg.data.image_root is None, "data.image_root",
         f"null unless data.source=list (data.source is {cfg.data.source!r})", cfg.data.image_root)
    need(cfg.data.source != "tfds" or bool(cfg.data.tfds_name), "data.tfds_name",
         "a TFDS dataset name (e.g. cars196) when data.source=tfds", cfg.data.tfds_name)
    u = cfg.tune
    need(0 < u.val_fraction < 1, "tune.val_fraction", "a fraction in (0, 1) of the training classes", u.val_fraction)
    need(u.max_trials >= 0, "tune.max_trials", "an integer >= 0 (0 = the whole grid)", u.max_trials)
    scalar_keys = [f"recall@{k}" for k in cfg.eval.recall_ks] + ["map@r", "r_precision"]
    need(u.objective in scalar_keys, "tune.objective",
         f"one of {scalar_keys} (recall@K needs K in eval.recall_ks)", u.objective)
    need(u.name is None or folder_name_problem(u.name) is None, "tune.name",
         f"one folder name under <run.root>/tune ({_ONE_FOLDER}), or null: named after run.name", u.name)
    need(cfg.index.num_neighbors >= 1, "index.num_neighbors", "an integer >= 1", cfg.index.num_neighbors)
    fits = ("hamming",) if cfg.model.head == "hash" else ("exact", "scann")
    need(set(cfg.export.retrieval) <= set(fits), "export.retrieval",
         f"some of {list(fits)} with model.head={cfg.model.head} ("
         + ("an index of binary codes is served by Hamming search)" if cfg.model.head == "hash" else
            "'hamming' serves the binary codes of model.head=hash)"), cfg.export.retrieval)
    need(not cfg.export.retrieval or (cfg.export.enabled and cfg.index.enabled), "export.retrieval",
         "empty unless export.enabled and index.enabled (it serves the exported index)", cfg.export.retrieval)
    need(cfg.export.max_pixels >= 1, "export.max_pixels", "an integer >= 1 (width x height of the largest image "
         "the export decodes; e.g. 50000000)", cfg.export.max_pixels)
    t = cfg.train
    need(t.warmup_steps >= 0, "train.warmup_steps", "an integer >= 0", t.warmup_steps)
    need(t.lr_schedule != "inverse_sqrt" or t.warmup_steps > 0, "train.warmup_steps",
         "> 0 with train.lr_schedule=inverse_sqrt (the rate peaks at the end of the warm-up)", t.warmup_steps)
    need(0 <= t.momentum < 1, "train.momentum", "a number in [0, 1)", t.momentum)
    need(t.weight_decay >= 0, "train.weight_decay", "a number >= 0 (0 = none)", t.weight_decay)
    metric_keys = [f"recall@{k}" for k in cfg.eval.recall_ks] + ["map@r", "r_precision"]
    need(t.select_metric in metric_keys, "train.select_metric",
         f"one of {metric_keys} (recall@K needs K in eval.recall_ks)", t.select_metric)
    need(t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps", "an integer >= 0 (0 = each epoch only)",
         t.checkpoint_every_steps)
    need(t.patience >= 0, "train.patience", "an integer >= 0 (0 = train every epoch)", t.patience)
    need(t.patience == 0 or t.select_best, "train.patience", "0 unless train.select_best=true", t.patience)
    need(0 < t.val_fraction < 1, "train.val_fraction", "a fraction in (0, 1) of the training classes",
         t.val_fraction)
    need(t.head_lr_multiplier > 0, "train.head_lr_multiplier", "a number > 0", t.head_lr_multiplier)
    need(0 < cfg.index.target_recall <= 1, "index.target_recall", "a recall in (0, 1], e.g. 0.95",
         cfg.index.target_recall)
    for key in ("brute_force_below", "num_leaves", "num_leaves_to_search", "reorder"):
        need(getattr(cfg.index, key) >= 0, f"index.{key}", "an integer >= 0 (0 = chosen by the index)",
             getattr(cfg.index, key))
    # Names become folders under a root: one path component each, so nothing is written outside it.
    need(cfg.run.name is None or folder_name_problem(cfg.run.name) is None, "run.name",
         f"one folder name under run.root ({_ONE_FOLDER}), or null: named after the data",
         cfg.run.name)
    need(cfg.export.name is None or folder_name_problem(cfg.export.name) is None, "export.name",
         f"one folder name under export.root ({_ONE_FOLDER}), or null: named after run.name", cfg.export.name)
    need(0 <= cfg.data.test_fraction < 1, "data.test_fraction", "a fraction in [0, 1) (0 = the second half)",
         cfg.data.test_fraction)
    need(cfg.data.test_fraction == 0 or not cfg.data.test_classes, "data.test_fraction",
         "0 when data.test_classes names the held-out classes", cfg.data.test_fraction)
    need(cfg.data.protocol == "class_disjoint" or not cfg.data.test_classes, "data.test_classes",
         "empty with data.protocol=database_query (its queries are the source's test split, of the same classes)",
         cfg.data.test_classes)
    need(cfg.data.source in ("folder", "list") or cfg.data.path is None, "data.path",
         f"null unless data.source=folder or list (add --set data.source=folder to train on that folder; "
         f"data.source is {cfg.data.source!r})", cfg.data.path)
    need(cfg.data.source == "tfds" or cfg.data.tfds_name is None, "data.tfds_name",
         f"null unless data.source=tfds (add --set data.source=tfds; data.source is {cfg.data.source!r})",
         cfg.data.tfds_name)

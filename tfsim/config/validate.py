"""Checking a config before any work starts: one function per section, `validate` runs them all.

Each check covers what the dataclasses' types cannot (ranges, keys that belong to another
variant, combinations across sections) and raises `UserInputError` in the Keras form, naming
the config key: "Invalid value for `train.epochs`: expected an integer >= 1. Received:
train.epochs=0". A check that involves two sections sits with the key its message names.
The values of a sampler's and a loss's options are checked by the same functions as the
samplers and losses check them (`tfsim.options`), so the two cannot drift apart. Nothing here
imports TensorFlow: a mistake is reported before it loads.

Example:
    >>> validate(Config())
"""

from __future__ import annotations

from typing import Any, Optional

from tfsim import options
from tfsim.config.schema import SAMPLER_KEYS, Config, backbone_args, loss_args
from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.errors import UserInputError, config_keys

_ONE_FOLDER = "not empty, no '/' or '\\', not starting with '.', so that it stays inside the root"


def _need(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise UserInputError(f"Invalid value for `{key}`: expected {expected}. Received: {key}={value!r}")


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


def validate_sampler(cfg: Config) -> None:
    """`sampler.*`: only the chosen kind's options, with values the samplers accept; the kind the loss takes."""
    s = cfg.sampler
    for key in SAMPLER_KEYS:
        _need(getattr(s, key) is None or key in options.SAMPLER_OPTIONS[s.kind], f"sampler.{key}",
              f"null for sampler.kind={s.kind!r}, which takes {list(options.SAMPLER_OPTIONS[s.kind])}",
              getattr(s, key))
    with config_keys(**{k: f"sampler.{k}" for k in SAMPLER_KEYS}):
        options.check_sampler_options(s.kind, **{k: getattr(s, k) for k in SAMPLER_KEYS})
    kind = options.LOSS_OPTIONS[cfg.loss.name].input_kind
    _need(kind != "triplets" or s.kind == "triplets", "sampler.kind",
          f"'triplets' for loss {cfg.loss.name!r}, which takes explicit (query, positive, negative) rows", s.kind)
    _need(s.kind != "triplets" or kind == "triplets", "sampler.kind",
          f"'pk' or 'random' for loss {cfg.loss.name!r} (only triplet_margin takes explicit triplets)", s.kind)


def validate_model(cfg: Config) -> None:
    """`model.*`: a registered backbone with only its own options, sizes in range, hash codes in whole bytes."""
    m = cfg.model
    _need(m.backbone in options.BACKBONE_OPTIONS, "model.backbone", f"one of {sorted(options.BACKBONE_OPTIONS)}",
          m.backbone)
    takes = list(options.BACKBONE_OPTIONS[m.backbone])
    for key, value in backbone_args(m).items():
        _need(key in takes, f"model.{key}", f"null for backbone {m.backbone!r}, which takes {takes}", value)
    _need(m.image_size >= 8, "model.image_size", "an integer >= 8 (pixels)", m.image_size)
    _need(0.25 <= m.center_crop <= 1, "model.center_crop", "a fraction of the side in [0.25, 1]", m.center_crop)
    _need(m.embedding_dim >= 2, "model.embedding_dim", "an integer >= 2", m.embedding_dim)
    _need(m.width is None or m.width >= 4, "model.width", "an integer >= 4", m.width)
    _need(m.blocks_per_stage is None or m.blocks_per_stage >= 1, "model.blocks_per_stage", "an integer >= 1",
          m.blocks_per_stage)
    _need(m.code_bits >= 8 and m.code_bits % 8 == 0, "model.code_bits",
          "a multiple of 8 (codes are packed 8 bits per byte), e.g. 16, 32, 48 or 64", m.code_bits)


def validate_loss(cfg: Config) -> None:
    """`loss.*`: a registered loss with only its own arguments, with values its constructor accepts."""
    lc = cfg.loss
    _need(lc.name in options.LOSS_OPTIONS, "loss.name", f"one of {sorted(options.LOSS_OPTIONS)}", lc.name)
    loss_options = options.LOSS_OPTIONS[lc.name]
    takes = list(loss_options.arguments)
    for key in loss_args(lc):
        _need(key in takes or key == "cross_replica", f"loss.{key}",
              f"null for loss {lc.name!r}, which takes {takes} (set it only with a loss that has it)",
              getattr(lc, key))
    with config_keys(**{k: f"loss.{k}" for k in takes}):
        options.check_loss_arguments(lc.name, **{k: v for k, v in loss_args(lc).items() if k in takes})
    _need(lc.quantization_weight >= 0, "loss.quantization_weight", "a number >= 0 (0 = none)", lc.quantization_weight)
    _need(lc.quantization_weight == 0 or cfg.model.head == "hash", "loss.quantization_weight",
          "0 unless model.head=hash (it pushes the hash codes to +-1)", lc.quantization_weight)
    _need(lc.quantization_weight == 0 or loss_options.input_kind != "proxy_similarities", "loss.quantization_weight",
          f"0 with loss {lc.name!r}, a proxy loss (it sees the codes' cosines to the class proxies, not the "
          "codes; use a batch loss such as triplet_semihard)", lc.quantization_weight)
    _need(lc.proxy_lr_multiplier > 0, "loss.proxy_lr_multiplier", "a number > 0", lc.proxy_lr_multiplier)
    _need(lc.memory_size >= 0, "loss.memory_size", "an integer >= 0 (0 = no cross-batch memory)", lc.memory_size)
    _need(lc.memory_warmup_steps >= 0, "loss.memory_warmup_steps", "an integer >= 0", lc.memory_warmup_steps)
    if lc.memory_size:
        _need(loss_options.input_kind == "embeddings" and loss_options.cross_replica, "loss.memory_size",
              f"0 with loss {lc.name!r}: a cross-batch memory serves tfsim's mining losses of labelled embeddings "
              "(triplet_semihard, triplet_hard, lifted_struct, batch_all_triplet, multi_similarity, contrastive, "
              "binomial_deviance, nca)", lc.memory_size)
        _need(cfg.model.head != "hash", "loss.memory_size", "0 with model.head=hash (use model.head=embedding)",
              lc.memory_size)
    _need(not lc.cross_replica or loss_options.cross_replica, "loss.cross_replica",
          f"false for loss {lc.name!r}, which has no cross-replica mode (only tfsim's batch losses do)",
          lc.cross_replica)


def validate_data(cfg: Config) -> None:
    """`data.*`: the keys of the chosen source only, a split that fits the protocol, augmentation options
    only with augmentation on."""
    d = cfg.data
    _need(d.source != "folder" or bool(d.path), "data.path", "the image folder when data.source=folder", d.path)
    _need(d.source != "list" or bool(d.path), "data.path", "the list file when data.source=list", d.path)
    _need(d.source in ("folder", "list") or d.path is None, "data.path",
          f"null unless data.source=folder or list (add --set data.source=folder to train on that folder; "
          f"data.source is {d.source!r})", d.path)
    _need(d.source == "list" or d.image_root is None, "data.image_root",
          f"null unless data.source=list (data.source is {d.source!r})", d.image_root)
    _need(d.source != "tfds" or bool(d.tfds_name), "data.tfds_name",
          "a TFDS dataset name (e.g. cars196) when data.source=tfds", d.tfds_name)
    _need(d.source == "tfds" or d.tfds_name is None, "data.tfds_name",
          f"null unless data.source=tfds (add --set data.source=tfds; data.source is {d.source!r})", d.tfds_name)
    _need(0 <= d.test_fraction < 1, "data.test_fraction", "a fraction in [0, 1) (0 = the second half)",
          d.test_fraction)
    _need(d.test_fraction == 0 or not d.test_classes, "data.test_fraction",
          "0 when data.test_classes names the held-out classes", d.test_fraction)
    _need(d.protocol == "class_disjoint" or not d.test_classes, "data.test_classes",
          "empty with data.protocol=database_query (its queries are the source's test split, of the same classes)",
          d.test_classes)
    _need(d.augment or d.augmentation == "shift", "data.augmentation",
          "'shift' when data.augment=false (cropping is part of the augmentation)", d.augmentation)
    _need(0 <= d.erase_prob <= 1, "data.erase_prob", "a probability in [0, 1]", d.erase_prob)
    _need(d.cache_mb >= 0, "data.cache_mb", "an integer >= 0 (MB of decoded training images kept in memory; "
          "0 = decode them from their files at every step)", d.cache_mb)
    _need(d.augment or d.erase_prob == 0, "data.erase_prob",
          "0 when data.augment=false (erasing is part of the augmentation)", d.erase_prob)
    _need(d.augment or not d.flip, "data.flip",
          "false when data.augment=false (flipping is part of the augmentation)", d.flip)
    _need(d.max_pixels >= 1, "data.max_pixels", "an integer >= 1 (width x height of the largest image the "
          f"loaders decode; default {DEFAULT_MAX_PIXELS})", d.max_pixels)


def validate_train(cfg: Config) -> None:
    """`train.*`: a run of at least one step, a schedule and optimiser in range, a selection metric the
    evaluation reports."""
    t = cfg.train
    _need(t.epochs >= 1, "train.epochs", "an integer >= 1", t.epochs)
    _need(t.steps_per_epoch >= 1 or (t.steps_per_epoch == 0 and cfg.sampler.kind == "epoch"),
          "train.steps_per_epoch", "an integer >= 1 (0, one whole pass, only with sampler.kind=epoch)",
          t.steps_per_epoch)
    _need(t.learning_rate > 0, "train.learning_rate", "a number > 0", t.learning_rate)
    _need(t.warmup_steps >= 0, "train.warmup_steps", "an integer >= 0", t.warmup_steps)
    _need(t.lr_schedule != "inverse_sqrt" or t.warmup_steps > 0, "train.warmup_steps",
          "> 0 with train.lr_schedule=inverse_sqrt (the rate peaks at the end of the warm-up)", t.warmup_steps)
    _need(0 <= t.momentum < 1, "train.momentum", "a number in [0, 1)", t.momentum)
    _need(t.weight_decay >= 0, "train.weight_decay", "a number >= 0 (0 = none)", t.weight_decay)
    _need(t.head_lr_multiplier > 0, "train.head_lr_multiplier", "a number > 0", t.head_lr_multiplier)
    metrics = options.scalar_metrics(cfg.eval.recall_ks)
    _need(t.select_metric in metrics, "train.select_metric",
          f"one of {metrics} (recall@K needs K in eval.recall_ks)", t.select_metric)
    _need(t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps", "an integer >= 0 (0 = each epoch only)",
          t.checkpoint_every_steps)
    _need(t.patience >= 0, "train.patience", "an integer >= 0 (0 = train every epoch)", t.patience)
    _need(t.patience == 0 or t.select_best, "train.patience", "0 unless train.select_best=true", t.patience)
    _need(0 < t.val_fraction < 1, "train.val_fraction", "a fraction in (0, 1) of the training classes",
          t.val_fraction)


def validate_eval(cfg: Config) -> None:
    """`eval.*`: at least one Recall@K."""
    ks = cfg.eval.recall_ks
    _need(len(ks) > 0 and all(k >= 1 for k in ks), "eval.recall_ks", "a non-empty list of integers >= 1", ks)


def validate_whitening(cfg: Config) -> None:
    """`whitening.*`: an exponent and axes in range; off with hash codes."""
    w, m = cfg.whitening, cfg.model
    _need(0 <= w.power <= 1, "whitening.power", "a number in [0, 1] (0 = PCA only, 1 = full whitening)", w.power)
    _need(0 <= w.dims <= m.embedding_dim, "whitening.dims",
          f"0 (all axes) or 1..model.embedding_dim={m.embedding_dim}", w.dims)
    _need(w.max_images >= 2, "whitening.max_images", "an integer >= 2", w.max_images)
    _need(m.head != "hash" or w.enabled is not True, "whitening.enabled",
          "false or 'auto' with model.head=hash (a whitening would rotate the codes; auto is off there)", w.enabled)
    _need(len(w.auto_powers) > 0 and all(0 <= p <= 1 for p in w.auto_powers), "whitening.auto_powers",
          "a non-empty list of numbers in [0, 1]", w.auto_powers)
    _need(0 <= w.auto_margin < 1, "whitening.auto_margin", "a number in [0, 1)", w.auto_margin)


def validate_export(cfg: Config) -> None:
    """`export.*`: retrieval exports that serve the model's kind of embedding, of an exported index; a
    forced calibration ("precision", "f1") only of float embeddings on classes held out of training."""
    e = cfg.export
    fits = ("hamming",) if cfg.model.head == "hash" else ("exact", "scann")
    _need(set(e.retrieval) <= set(fits), "export.retrieval",
          f"some of {list(fits)} with model.head={cfg.model.head} ("
          + ("an index of binary codes is served by Hamming search)" if cfg.model.head == "hash" else
             "'hamming' serves the binary codes of model.head=hash)"), e.retrieval)
    _need(not e.retrieval or (e.enabled and cfg.index.enabled), "export.retrieval",
          "empty unless export.enabled and index.enabled (it serves the exported index)", e.retrieval)
    _need(e.max_pixels >= 1, "export.max_pixels", "an integer >= 1 (width x height of the largest image "
          "the export decodes; e.g. 50000000)", e.max_pixels)
    _need(e.name is None or folder_name_problem(e.name) is None, "export.name",
          f"one folder name under export.root ({_ONE_FOLDER}), or null: named after run.name", e.name)
    _need(0 < e.calibration_precision <= 1, "export.calibration_precision",
          "a target precision in (0, 1], e.g. 0.9 (with export.calibration=auto or precision)",
          e.calibration_precision)
    # Forced calibration: refused here when it could only be fitted on classes the model trained on.
    _need(e.calibration in ("auto", "off") or cfg.train.select_best, "export.calibration",
          "'auto' or 'off' unless train.select_best=true: a threshold is calibrated on the validation classes it "
          "holds out of training (add --set train.select_best=true; a threshold fitted on classes the model trained "
          "on would overstate its precision on new ones)", e.calibration)
    _need(e.calibration in ("auto", "off") or cfg.model.head != "hash", "export.calibration",
          "'auto' or 'off' with model.head=hash (binary codes are searched by Hamming distance; calibration applies "
          "to float embeddings)", e.calibration)


def validate_index(cfg: Config) -> None:
    """`index.*`: sizes >= 0 (0 = chosen by the index) and a reachable recall target."""
    i = cfg.index
    _need(i.num_neighbors >= 1, "index.num_neighbors", "an integer >= 1", i.num_neighbors)
    _need(0 < i.target_recall <= 1, "index.target_recall", "a recall in (0, 1], e.g. 0.95", i.target_recall)
    for key in ("brute_force_below", "num_leaves", "num_leaves_to_search", "reorder"):
        _need(getattr(i, key) >= 0, f"index.{key}", "an integer >= 0 (0 = chosen by the index)", getattr(i, key))
    _need(i.hamming_exact_below >= 0, "index.hamming_exact_below",
          "an integer >= 0 (binary galleries of fewer codes are searched exactly; 0 = always an inverted file)",
          i.hamming_exact_below)


def validate_tune(cfg: Config) -> None:
    """`tune.*`: validation classes to carve, an objective the evaluation reports, one folder name."""
    tune = cfg.tune
    _need(0 < tune.val_fraction < 1, "tune.val_fraction", "a fraction in (0, 1) of the training classes",
          tune.val_fraction)
    _need(tune.max_trials >= 0, "tune.max_trials", "an integer >= 0 (0 = the whole grid)", tune.max_trials)
    metrics = options.scalar_metrics(cfg.eval.recall_ks)
    _need(tune.objective in metrics, "tune.objective", f"one of {metrics} (recall@K needs K in eval.recall_ks)",
          tune.objective)
    _need(tune.name is None or folder_name_problem(tune.name) is None, "tune.name",
          f"one folder name under <run.root>/tune ({_ONE_FOLDER}), or null: named after run.name", tune.name)


def validate_run(cfg: Config) -> None:
    """`run.*`: the run's name is one folder under `run.root`, so nothing is written outside it."""
    _need(cfg.run.name is None or folder_name_problem(cfg.run.name) is None, "run.name",
          f"one folder name under run.root ({_ONE_FOLDER}), or null: named after the data", cfg.run.name)


# In the order a reader meets the sections; a section's checks may read the sections before it
# (the sampler reads the loss's input kind, so the loss name is checked first).
SECTION_CHECKS = (validate_run, validate_data, validate_model, validate_loss, validate_sampler, validate_train,
                  validate_eval, validate_whitening, validate_export, validate_index, validate_tune)


def validate(cfg: Config) -> None:
    """Checks what types alone cannot, section by section; raises UserInputError with the fix."""
    for check in SECTION_CHECKS:
        check(cfg)

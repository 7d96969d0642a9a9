"""Pre-flight: every check of config, data and replica count, in config terms, before training.

Library functions name their own arguments in their errors (`sources.load_folder` says
`root`, `samplers.check_pk` says `classes_per_batch`); a user of the CLI set config keys.
`config_keys(...)` rewrites a library's `UserInputError` raised inside it into the config
key the value came from, and `check(cfg, train_labels, replicas)` runs, before any model is built,
the checks that need the data or the replica count (what `config.validate` cannot know).

    with config_keys(root="data.path"):
        images = sources.load_folder(cfg.data.path)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from tfsim.config import Config
from tfsim.data import samplers
from tfsim.errors import UserInputError, config_keys

# Library argument -> the config key that feeds it, for the calls `train` makes.
DATA_KEYS = {"root": "data.path", "path": "data.path", "image_root": "data.image_root", "name": "data.tfds_name",
             "manual_dir": "data.manual_dir", "test_classes": "data.test_classes", "on_bad_file": "data.on_bad_file",
             "test_fraction": "data.test_fraction"}
SAMPLER_KEYS = {"classes_per_batch": "sampler.classes_per_batch", "examples_per_class": "sampler.examples_per_class",
                "batch_size": "sampler.batch_size", "triplets_per_query": "sampler.triplets_per_query",
                "num_triplets": "sampler.batch_size // 3", "small_classes": "sampler.small_classes"}
MODEL_KEYS = {"weights": "model.weights", "backbone": "model.backbone"}
PK_KEYS = ("classes_per_batch", "examples_per_class")

log = logging.getLogger(__name__)


def unset_pk_keys(cfg: Config) -> tuple[str, ...]:
    """The P x K options a config leaves to tfsim: null before `config.resolve` fills in the defaults.

    Call it on the config as the user wrote it (a preset or JSON file setting them counts as set).
    """
    if cfg.sampler.kind != "pk":
        return ()
    return tuple(k for k in PK_KEYS if getattr(cfg.sampler, k) is None)


def choose_pk(cfg: Config, train_labels, replicas: int, unset: tuple[str, ...], say: bool = True) -> Config:
    """The resolved `cfg` with the P x K options in `unset` lowered to what the training set allows.

    A small folder (6 classes, half held out) has fewer training classes than the default P = 6:
    P becomes the number of training classes (with `small_classes='skip'`, of those with at least
    K images), rounded down to a multiple of the replicas; then K is lowered, if needed, so the
    batch holds no more images than the training set. Options the user set are never changed:
    `check` refuses them with what to set instead. One log line says what was chosen and why
    (unless `say` is False).
    """
    s = cfg.sampler
    if s.kind != "pk" or not unset:
        return cfg
    classes, counts = np.unique(np.asarray(train_labels), return_counts=True)
    p, k = s.classes_per_batch, s.examples_per_class
    why = []
    if "classes_per_batch" in unset:
        usable = int((counts >= k).sum()) if s.small_classes == "skip" else len(classes)
        allowed = usable - usable % replicas
        if 2 <= allowed < p:
            p = allowed
            why.append(f"sampler.classes_per_batch={p} (P, default {s.classes_per_batch}): the training set has "
                       f"{usable} classes" + (f" with at least K={k} images" if s.small_classes == "skip" else "")
                       + (f", rounded down to a multiple of the {replicas} replicas" if usable % replicas else ""))
    if "examples_per_class" in unset and p * k > len(train_labels) and len(train_labels) // p >= 2:
        k = len(train_labels) // p
        why.append(f"sampler.examples_per_class={k} (K, default {s.examples_per_class}): a batch of P x K images "
                   f"fits the {len(train_labels)} training images")
    if not why:
        return cfg
    if say:
            log.info("Chose %s. Set these keys to choose yourself.", "; ".join(why))
    return dataclasses.replace(cfg, sampler=dataclasses.replace(s, classes_per_batch=p, examples_per_class=k))


def check(cfg: Config, train_labels, replicas: int) -> None:
    """Checks the sampler against the training labels and the replica count; raises UserInputError."""
    s = cfg.sampler
    with config_keys(**SAMPLER_KEYS):
        if s.kind == "pk":
            samplers.check_pk(train_labels, s.classes_per_batch, s.examples_per_class, s.small_classes or "replace")
        elif s.kind == "triplets":
            samplers.check_triplets(train_labels)
    if s.kind == "epoch":
        n, b, steps = len(train_labels), s.batch_size, cfg.train.steps_per_epoch
        if b > n or steps > n // b:
            raise UserInputError(
                f"Invalid value for `train.steps_per_epoch`: expected 1..{n // b} (one pass over the {n} training "
                f"images in batches of sampler.batch_size={b}), or 0 for one whole pass. Received: {steps}")
    if s.kind == "pk":
        key, units, what = "sampler.classes_per_batch", s.classes_per_batch, "whole classes"
    elif s.kind in ("random", "epoch"):
        key, units, what = "sampler.batch_size", s.batch_size, "equal shares"
    else:
        key, units, what = "sampler.batch_size", s.batch_size // 3, "whole triplets (batch_size // 3 of them)"
    if units % replicas:
        raise UserInputError(f"Invalid value for `{key}`: expected a multiple of the {replicas} replicas so each "
                             f"replica holds {what}. Received: {units}")


def check_writable(path: os.PathLike, key: str) -> None:
    """Raises UserInputError unless the folder `path` exists or can be created, and can be written.

    Tried for real (a temporary file in the deepest existing folder), so read-only mounts are
    caught even for root, for whom permission bits do not apply.
    """
    target = Path(path).absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    fix = f"Set {key} to a folder you can write to."
    if not existing.is_dir():
        raise UserInputError(f"Cannot write the folder {str(path)!r} ({key}): {str(existing)!r} is a file, not a "
                             f"folder. {fix}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserInputError(f"Cannot write the folder {str(path)!r} ({key}): {str(existing)!r} is not writable "
                             f"({err.strerror}). {fix}") from None


def split_report(cfg: Config, train_labels: np.ndarray, test_labels: np.ndarray, class_names) -> dict:
    """What the split and the sampler will do with the classes, for data_report.json: training and
    held-out class and image counts, classes a P x K sampler samples with replacement or leaves
    out, held-out classes with a single image (their query has no match and is left out of the
    metrics, see `num_queries`) and training classes with a single image (no positive pair)."""
    train_classes, train_counts = np.unique(train_labels, return_counts=True)
    test_classes, test_counts = np.unique(test_labels, return_counts=True)
    report = {"training_classes": int(len(train_classes)), "training_images": int(len(train_labels)),
              "held_out_classes": int(len(test_classes)), "held_out_images": int(len(test_labels)),
              "held_out_classes_with_one_image": [class_names[c] for c in test_classes[test_counts < 2]],
              "training_classes_with_one_image": [class_names[c] for c in train_classes[train_counts < 2]]}
    s = cfg.sampler
    if s.kind == "pk":
        small = train_classes[train_counts < s.examples_per_class]
        report["pk_classes_below_k"] = {"k": s.examples_per_class, "count": int(len(small)),
                                        "policy": s.small_classes or "replace",
                                        "classes": [class_names[c] for c in small[:100]]}
    return report

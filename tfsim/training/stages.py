"""The stages after training, each reading the files the one before it wrote.

    checkpoints/epoch-NNNN.keras --runs.load_embedder--> the trained embedder (one device)
      --whitening_stage--> whitening.npz (PCA whitening fitted on the training images)
      --runs.final_model--> `embedder -> Whitening`: THE model; it is evaluated, exported and indexed
      --evaluate_stage--> metrics.json (+ baselines.json: computed once per data/model/eval
                          setting and reused, e.g. when a finished run is re-exported)
      --export_stage--> saved_models/<name>/<version>/ (a new version only when the exported
                        function or its settings changed) with the ScaNN index inside, built
                        from embeddings computed by the exported SavedModel itself; first
                        calibration_stage: the match threshold on the validation classes
                        `train.select_best` held out of training (`export.calibration`), and
                        its flag measured on the test classes, recorded in export.json and
                        metrics.json

`tfsim.training.run.train` runs them in order after `fit`; each is a function of the
config, the run folder and the data, so a command that only evaluates or exports can call
the ones it needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tfsim import config as config_lib
from tfsim import runs
from tfsim.config import Config
from tfsim.data import pipeline, sources
from tfsim.errors import UserInputError
from tfsim.evaluation.calibration import calibrate_pairs, evaluate_threshold, neighbour_pairs
from tfsim.evaluation import selection
from tfsim.evaluation.metrics import query_mask, retrieval_metrics
from tfsim.export.catalogue import catalogue_ids
from tfsim.export.embed import embed_export
from tfsim.export.identity import model_fingerprint
from tfsim.export.retrieval import export_retrieval
from tfsim.export.saved_model import META_DIR, export_embedder, remove_leftovers
from tfsim.files import latest_version, write_json
from tfsim.index import float_search, storage
from tfsim.index.hamming import build_hamming, hamming_metrics
from tfsim.models.whitening import Whitening, apply_whitening, fit_whitening, normalize_rows, whiten
from tfsim.training import task

log = logging.getLogger(__name__)

# Raw-pixel vectors longer than this (e.g. 64x64x3 = 12,288) get no whitened baseline: their
# covariance would be too large to fit. The default's 28x28x3 = 2,352 is far below.
MAX_WHITENED_PIXELS = 4096
# Raw-pixel baselines are skipped when the held-out pixels would take more memory than this
# (8,000 Cars196 images at 224 px are ~4.8 GB as float32).
MAX_RAW_PIXEL_BYTES = 1 << 30
BASELINES_VERSION = 1


def _hash(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(str((part.dtype.str, part.shape)).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def whitening_fit_set(cfg: Config, train_set: sources.ImageSet) -> sources.ImageSet:
    """The training images the whitening is fitted on: all, or a seeded subset of `whitening.max_images`."""
    w = cfg.whitening
    if len(train_set) <= w.max_images:
        return train_set
    rows = np.sort(np.random.default_rng(cfg.train.seed).choice(len(train_set), w.max_images, replace=False))
    return train_set.subset(rows)


def _fit_or_explain(features: np.ndarray, w: config_lib.WhiteningConfig,
                    warn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`fit_whitening` with the run's settings; a degenerate fit becomes a user-facing message
    (`warn`: also warn of too few images per dimension)."""
    if warn and len(features) < 4 * features.shape[1]:
        log.warning("Whitening is fitted on %d images for %d dimensions; with fewer than ~4 per dimension "
                    "the small-variance axes are noise and whitening can hurt (try whitening.power=0 or "
                    "whitening.dims smaller, or whitening.enabled=false).", len(features), features.shape[1])
    try:
        return fit_whitening(features, w.power, w.dims)
    except ValueError as e:
        raise UserInputError(
            f"Cannot fit the whitening on the training images' embeddings: {e} Check that training did not "
            "collapse (lower train.learning_rate), or set whitening.enabled=false.") from e


MIN_AUTO_CLASSES = 4  # whitening.enabled=auto: 2 classes to validate on, 2 to fit on, at the least
AUTO_FOLDS = 4
AUTO_METRIC = "recall@1"


def choose_whitening(cfg: Config, embedder: keras.Model, train_set: sources.ImageSet,
                     validation_classes: Optional[np.ndarray] = None
                     ) -> tuple[Config, Optional[dict], Optional[np.ndarray]]:
    """`whitening.enabled=auto`: no whitening or one of `whitening.auto_powers` (and `power`),
    chosen on classes the whitening under test is not fitted on, never the test classes.

    The run's training images (`whitening_fit_set`) are embedded once. With `validation_classes`
    (the classes `train.select_best` held out of training) each candidate is fitted on the other
    training classes and scored on those; otherwise on `AUTO_FOLDS` folds of the training classes
    (seeded by `train.seed`; each fold's candidates fitted on the other folds' classes). The
    network trained on those classes: Recall@1 is the judge there, since MAP@R on trained
    classes favours no whitening (on the bench's five sets it chose right on 7 of 15 runs, where
    Recall@1 chose right on 14). `power` is kept unless another candidate's mean Recall@1 beats
    it by more than `whitening.auto_margin` (`tfsim.evaluation.selection.choose`).

    Returns:
        `(cfg with whitening.enabled true or false and its power, the record for metrics.json's
        "whitening" (None unless auto), the training embeddings when they were computed (for
        `whitening_stage`))`.
    """
    w = cfg.whitening
    if w.enabled != "auto":
        return cfg, None, None
    record: dict = {"mode": "auto", "metric": AUTO_METRIC, "margin": w.auto_margin, "test_classes_used": False}

    def keep(enabled: bool, reason: str, power: float = w.power, **figures):
        chosen = dataclasses.replace(cfg, whitening=dataclasses.replace(w, enabled=enabled, power=power))
        log.info("Whitening (whitening.enabled=auto): %s.", reason)
        return chosen, {**record, "chosen": selection.candidate_name(power if enabled else None), "reason": reason,
                        **figures}

    if cfg.model.head == "hash":
        return (*keep(False, "off: a hashing model's codes are not whitened"), None)
    fit_set = whitening_fit_set(cfg, train_set)
    classes = np.unique(fit_set.labels)
    if validation_classes is None and len(classes) < MIN_AUTO_CLASSES:
        return (*keep(True, f"power {w.power:g}, the preset's: {len(classes)} training classes are too few to "
                      f"choose on (at least {MIN_AUTO_CLASSES})"), None)
    features = task.Task(cfg).embed(embedder, fit_set)
    if validation_classes is not None:
        held = [np.asarray(validation_classes)]
        where = (f"the {len(held[0])} validation classes train.select_best held out of training, each candidate "
                 "fitted on the other training classes")
    else:
        order = np.random.default_rng(cfg.train.seed).permutation(classes)
        folds = min(AUTO_FOLDS, len(classes) // 2)
        held = [order[f::folds] for f in range(folds)]
        where = (f"{folds} folds of the {len(classes)} training classes, each fold's candidates fitted on the other "
                 "folds' classes (the network trained on all of them)")
    folds = []
    for val in held:
        mask = np.isin(fit_set.labels, val)
        folds.append((features[~mask], features[mask], fit_set.labels[mask]))
    powers = sorted({*w.auto_powers, w.power})
    try:
        scores = selection.whitening_scores(folds, powers, AUTO_METRIC, w.dims, cfg.eval.similarity)
    except ValueError as e:  # a degenerate fit (collapsed or non-finite embeddings), as `_fit_or_explain` says
        raise UserInputError(
            f"Cannot choose the whitening (whitening.enabled=auto) on the training images' embeddings: {e} Check "
            "that training did not collapse (lower train.learning_rate), or set whitening.enabled=false.") from e
    chosen, means = selection.choose(scores, selection.candidate_name(w.power), w.auto_margin)
    figures = {"on": where, "scores": scores, "means": means}
    summary = ", ".join(f"{name} {value:.4f}" for name, value in means.items())
    if chosen == selection.OFF:
        resolved = keep(False, f"off, chosen on {where} (mean Recall@1: {summary})", **figures)
    else:
        resolved = keep(True, f"power {chosen}, chosen on {where} (mean Recall@1: {summary})", float(chosen),
                        **figures)
    return (*resolved, features)


def whitening_stage(cfg: Config, embedder: keras.Model, train_set: sources.ImageSet,
                    run_dir: Optional[Path] = None, checkpoint: Optional[Path] = None,
                    quiet: bool = False, features: Optional[np.ndarray] = None
                    ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Fits the configured whitening on the training images' embeddings; writes `whitening.npz`
    (with the name of the `checkpoint` it was fitted on, so that evaluating a run's checkpoint
    applies it only to that checkpoint).

    `quiet`: log nothing (the baselines' untrained network: the trained one's fit on the same
    images already said what it does and warned of too few images). `features`: the embeddings
    of `whitening_fit_set(cfg, train_set)` when `choose_whitening` computed them.

    Returns `(mean, projection)`, or None when `whitening.enabled` is false (a `run_dir`'s
    whitening.npz is then removed: none applies to its checkpoint). With "auto" (not chosen
    yet: the baselines' untrained network) the preset's `power` is fitted.
    """
    if not cfg.whitening.enabled:
        if run_dir is not None:
            (Path(run_dir) / "whitening.npz").unlink(missing_ok=True)
        return None
    fit_set = whitening_fit_set(cfg, train_set)
    if not quiet:
        log.info("Fitting the whitening on %s training embeddings...", f"{len(fit_set):,}")
    if features is None:
        features = task.Task(cfg).embed(embedder, fit_set)
    mean, projection = _fit_or_explain(features, cfg.whitening, warn=not quiet)
    if run_dir is not None:
        runs.write_whitening(run_dir, mean, projection, checkpoint)
    return mean, projection


def baselines_stage(cfg: Config, run_dir: Path, train_set: sources.ImageSet,
                    test_set: sources.ImageSet) -> Optional[dict]:
    """Held-out metrics of the untrained network (same pipeline, whitening included) and of raw
    pixels (whitened too when small enough), cached in `baselines.json` by what they depend on.
    None when `eval.baselines` is off."""
    if not cfg.eval.baselines:
        return None

    key = _hash(BASELINES_VERSION, config_lib.to_dict(cfg.data), config_lib.to_dict(cfg.model),
                cfg.train.seed, config_lib.to_dict(cfg.whitening), list(cfg.eval.recall_ks), cfg.eval.similarity)
    cache = run_dir / "baselines.json"
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored["baselines"]
    ks, sim, m = cfg.eval.recall_ks, cfg.eval.similarity, cfg.model
    raw_bytes = len(test_set) * m.image_size ** 2 * 3 * 4
    log.info("Computing the baselines (the untrained network%s) on %s held-out images...",
             "" if raw_bytes > MAX_RAW_PIXEL_BYTES else ", raw pixels", f"{len(test_set):,}")
    untrained = task.Task(cfg).build_embedder()
    whitening = whitening_stage(cfg, untrained, train_set, quiet=True)
    queries = query_mask(test_set.splits)
    # The untrained network's embeddings, whitened as `runs.final_model` would (one model traced, not two).
    untrained_embeddings = task.Task(cfg).embed(untrained, test_set)
    if whitening is not None:
        untrained_embeddings = apply_whitening(untrained_embeddings, *whitening)
    baselines = {"untrained": retrieval_metrics(untrained_embeddings, test_set.labels, ks, sim, queries)}
    if cfg.model.head == "hash":
        baselines["untrained"]["hamming"] = hamming_metrics(untrained_embeddings, test_set.labels, queries)
    del untrained
    if raw_bytes > MAX_RAW_PIXEL_BYTES:
        log.info("Raw-pixel baselines skipped: %d held-out images at %d px would take %.1f GB.",
                 len(test_set), m.image_size, raw_bytes / 1e9)
    else:
        raw_test = pipeline.raw_pixels(test_set, m.image_size, m.center_crop)
        baselines["raw_pixels"] = retrieval_metrics(raw_test, test_set.labels, ks, "cosine", queries)
        w = cfg.whitening
        if w.enabled and w.dims <= raw_test.shape[1] <= MAX_WHITENED_PIXELS:
            raw_fit = normalize_rows(pipeline.raw_pixels(whitening_fit_set(cfg, train_set), m.image_size,
                                                         m.center_crop))
            baselines["raw_pixels_whitened"] = retrieval_metrics(
                whiten(normalize_rows(raw_test), *fit_whitening(raw_fit, w.power, w.dims)), test_set.labels, ks,
                "cosine", queries)
    write_json(cache, {"key": key, "baselines": baselines})
    return baselines


def evaluate_stage(cfg: Config, run_dir: Path, embedder: keras.Model, model: keras.Model,
                   test_set: sources.ImageSet, baselines: Optional[dict], extra: Optional[dict] = None,
                   keep: Optional[dict] = None) -> dict:
    """Held-out retrieval metrics of `model` (and of the embedder alone, `unwhitened`); writes metrics.json.
    `keep`: a dict that receives the held-out "embeddings" (for the TensorBoard projector).

    `model` is `runs.final_model(embedder, whitening)`: one pass of the embedder (the model the
    whitening stage embedded with) gives both, its last layer (the whitening) applied after."""
    ks, sim = cfg.eval.recall_ks, cfg.eval.similarity
    log.info("Evaluating on %s held-out images...", f"{len(test_set):,}")
    unwhitened = task.Task(cfg).embed(embedder, test_set)
    embeddings = unwhitened if model is embedder else np.asarray(model.layers[-1](unwhitened), np.float32)
    if keep is not None:
        keep["embeddings"] = embeddings
    queries = query_mask(test_set.splits)  # In-Shop: queries against the gallery; else leave-one-out
    metrics = retrieval_metrics(embeddings, test_set.labels, ks, sim, queries)
    metrics["protocol"] = "leave_one_out" if queries is None else "query_gallery"
    if cfg.model.head == "hash":  # the binary codes, searched by Hamming distance
        metrics["hamming"] = hamming_metrics(embeddings, test_set.labels, queries)
    if model is not embedder:
        metrics["unwhitened"] = retrieval_metrics(unwhitened, test_set.labels, ks, sim, queries)
    if baselines is not None:
        metrics["baselines"] = baselines
    metrics.update(extra or {})
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _file_part(text: str) -> str:
    return text.replace("/", "-").replace(" ", "_").lower()


def sample_name(class_name: str, image_id: str) -> str:
    """A sample's file name (no extension): the class, then the image's own name (its file stem, or
    the row of a TFDS id), without saying the class twice when the file is already named after it
    (`purple_text_A/purple_text_A_00.png` -> `purple_text_a_00`, not `purple_text_a_purple_text_a_00`).
    """
    label, stem = _file_part(class_name), _file_part(Path(str(image_id)).stem.rsplit(":", 1)[-1])
    if stem == label or stem.startswith(label + "_") or stem.startswith(label + "-"):
        return stem
    return f"{label}_{stem}"


def write_samples(test: sources.ImageSet, out: Path, per_class: int = 1) -> list[Path]:
    """A few held-out images as PNG files named by `sample_name` (a name taken twice gets `_2`,
    `_3`, ...), to try the search command on."""
    out.mkdir(parents=True, exist_ok=True)
    written, taken = [], set()
    for label in np.unique(test.labels):
        for row in np.flatnonzero(test.labels == label)[:per_class]:
            img = test.load_images([row])[0]
            name = base = sample_name(test.class_names[label], str(test.ids[row]))
            n = 1
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            taken.add(name)
            path = out / f"{name}.png"
            path.write_bytes(tf.io.encode_png(np.asarray(img, np.uint8)).numpy())
            written.append(path)
    return written


def retrieval_stage(cfg: Config, export_dir: Optional[Path]) -> list[Path]:
    """The retrieval SavedModels `export.retrieval` asks for, of the export and the index inside it
    (`tfsim.export.retrieval`); a kind whose latest version already serves this export is reused."""
    if export_dir is None or not cfg.export.retrieval:
        return []
    name = cfg.export.name or cfg.run.name
    out, missing = [], []
    for kind in cfg.export.retrieval:
        latest = latest_version(Path(cfg.export.root) / f"{name}_{kind}")
        meta_file = None if latest is None else latest / META_DIR / "export.json"
        if meta_file is not None and meta_file.is_file() and json.loads(meta_file.read_text()).get(
                "embedder", {}).get("path") == str(export_dir.resolve()):
            out.append(latest)
        else:
            missing.append(kind)
    if missing:
        log.info("Exporting the retrieval SavedModels (%s)...", ", ".join(missing))
        out += list(export_retrieval(export_dir, export_dir / META_DIR / "index", cfg.export.root,
                                     cfg.index.num_neighbors, missing, name).values())
    return out


def _embed_final(cfg: Config, model: keras.Model, images: sources.ImageSet) -> np.ndarray:
    """`model`'s embeddings of `images`. For `runs.final_model`'s `embedder -> Whitening`: the
    embedder's, by the embedding function the stages before already traced for it, then the
    whitening layer (as `evaluate_stage`), so no other model is traced."""
    layers = model.layers
    if len(layers) == 3 and isinstance(layers[1], keras.Model) and isinstance(layers[-1], Whitening):
        return np.asarray(layers[-1](task.Task(cfg).embed(layers[1], images)), np.float32)
    return task.Task(cfg).embed(model, images)


# A threshold needs this many validation classes held out of training to say something about new ones.
MIN_CALIBRATION_CLASSES = 3
# Part of an export's reuse key: 1 calibrated on classes the model had trained on too; 2 only on held-out ones.
CALIBRATION_VERSION = 2


def _val_fraction_hint(cfg: Config, num_training_classes: int) -> str:
    """How to hold out enough validation classes from `num_training_classes` (the "Hint" of a message)."""
    n, need = num_training_classes, MIN_CALIBRATION_CLASSES
    if n < need + 2:  # (`splits.validation_classes` leaves at least 2 classes to train on)
        return (f"{n} training classes cannot hold out {need} validation classes and keep 2 to train on; "
                f"at least {need + 2} are needed (data.test_classes / data.test_fraction)")
    count = max(2, int(round(cfg.train.val_fraction * n)))
    if count >= need:
        return "train.val_fraction=" + f"{cfg.train.val_fraction:g}"
    return f"train.val_fraction={need / n:.2g} ({cfg.train.val_fraction:g} of {n} training classes holds out {count})"


def check_calibration(cfg: Config, fit_split) -> None:
    """Before training: a forced `export.calibration` ("precision", "f1"; config validation has
    required `train.select_best`) with fewer than `MIN_CALIBRATION_CLASSES` validation classes in
    `fit_split.test` is refused now, not found uncalibrated after training. ("auto" exports
    uncalibrated instead, with the reason.)

    Raises:
        UserInputError: too few validation classes, with the `train.val_fraction` that gives enough.
    """
    e = cfg.export
    if not e.enabled or e.calibration not in ("precision", "f1") or not cfg.train.select_best:
        return
    held_out = len(np.unique(fit_split.test.labels))
    if held_out >= MIN_CALIBRATION_CLASSES:
        return
    n = held_out + len(np.unique(fit_split.train.labels))
    raise UserInputError(
        f"Invalid value for `train.val_fraction`: export.calibration={e.calibration!r} calibrates on the validation "
        f"classes train.select_best holds out of training, and needs at least {MIN_CALIBRATION_CLASSES}; "
        f"train.val_fraction={cfg.train.val_fraction:g} of the {n} training classes holds out {held_out}. Hint: "
        f"{_val_fraction_hint(cfg, n)}; or export.calibration=auto to export uncalibrated.")


def calibration_stage(cfg: Config, model: keras.Model, split,
                      test_embeddings: Optional[np.ndarray] = None) -> Optional[dict]:
    """The match threshold of `export.calibration`, calibrated on the validation classes
    `train.select_best` held out of training (`task.validation_split` with `train.val_fraction`
    and `train.seed`: the classes it carved), each validation image paired with its
    `index.num_neighbors` nearest others by `model` (the final, whitened one) under
    `eval.similarity` (`tfsim.calibration`). Then the flag is measured on the test classes'
    pairs (each test image with its `index.num_neighbors` nearest, leave-one-out or query against
    gallery as `evaluate_stage` searches): how the validation threshold transfers to new classes.

    Never on classes the model trained on: there the k nearest are mostly of one class already
    (83-90% of the pairs of the default run's validation classes when it trained on them), so a
    precision target is reached by almost any threshold and overstates the precision on new classes.

    Args:
        cfg: the run's config.
        model: the final model (`runs.final_model`).
        split: the run's split (`split.train`: every training class, validation ones included).
        test_embeddings: `model`'s embeddings of `split.test` (`evaluate_stage` keeps them), or
            None to embed them here.

    Returns:
        None when `export.calibration` is "off"; else the record for export.json and
        metrics.json: the threshold and its validation precision, recall and F1, the pairs and
        the classes it was calibrated on, `positive_pair_share` (the validation pairs of one class:
        the precision of accepting every pair), and on the test classes `test_precision`,
        `test_recall`, `test_accepted_share` and `test_positive_pair_share`; or `"threshold":
        None` with the `"reason"` (logged) when it is not calibrated: no validation classes held
        out (`train.select_best` off), fewer than `MIN_CALIBRATION_CLASSES` of them, a hashing
        model, a target precision no threshold reaches, or one every pair already reaches.
    """
    e = cfg.export
    if e.calibration == "off":
        return None
    target = e.calibration_precision if e.calibration in ("auto", "precision") else None
    record: dict = {"mode": e.calibration, "target_precision": target, "threshold": None}

    def uncalibrated(reason: str, level: int = logging.WARNING, **figures) -> dict:
        log.log(level, "The export is not calibrated (no match flag): %s", reason)
        return {**record, **figures, "reason": reason}

    if cfg.model.head == "hash":
        return uncalibrated("a hashing model's codes are searched by Hamming distance; calibration applies to "
                            "float embeddings.")
    num_training = len(np.unique(split.train.labels))
    if not cfg.train.select_best:
        return uncalibrated(
            "the model trained on every training class, so no classes are held out to calibrate a threshold on (one "
            "fitted on classes the model trained on overstates its precision on new ones). For a calibrated export, "
            + ("hold validation classes out: --set train.select_best=true "
               f"--set {_val_fraction_hint(cfg, num_training)}."
               if num_training >= MIN_CALIBRATION_CLASSES + 2 else
               f"hold validation classes out with train.select_best=true; {_val_fraction_hint(cfg, num_training)}."),
            logging.INFO)
    try:
        validation = task.validation_split(split, cfg.train.val_fraction, cfg.train.seed).test
    except UserInputError as err:
        return uncalibrated(f"no validation classes to calibrate on: {err}")
    names = [split.dataset.class_names[c] for c in np.unique(validation.labels)]
    if len(names) < MIN_CALIBRATION_CLASSES:
        return uncalibrated(
            f"only {len(names)} validation classes are held out ({', '.join(names)}); a threshold calibrated on fewer "
            f"than {MIN_CALIBRATION_CLASSES} says little about new classes. Hint: "
            f"{_val_fraction_hint(cfg, num_training)}.", validation_classes=names)
    log.info("Calibrating the match threshold on %s images of %d validation classes held out of training (%s)...",
             f"{len(validation):,}", len(names), ", ".join(names))
    k, sim = cfg.index.num_neighbors, cfg.eval.similarity
    scores, same, queries = neighbour_pairs(_embed_final(cfg, model, validation), validation.labels, k, sim)
    share = float(same.mean())
    seen = {"positive_pair_share": share, "validation_classes": names, "validation_images": len(validation)}
    try:
        found = calibrate_pairs(scores, same, target)
    except ValueError as err:
        return uncalibrated(f"on the validation classes: {err}", **seen)
    if found.threshold <= float(scores.min()):  # it accepts every validation pair
        return uncalibrated(
            f"{share:.1%} of the validation pairs (each image with its {k} nearest) are of one class already, so "
            + (f"the target precision {target:g} is reached by accepting every pair" if target is not None else
               "the best F1 accepts every pair")
            + ": every neighbour would match and the flag would say nothing. Ask for a precision above that share, "
            f"e.g. export.calibration_precision={(1 + share) / 2:.3g} (expect a lower one on new classes: "
            "the test figures of a calibrated run show how much).", **seen)
    found = dataclasses.replace(found, similarity=sim, k=int(len(scores) // queries), num_queries=queries)
    record = {"mode": e.calibration, **found.to_dict(), **seen}

    test = split.test
    try:
        embeddings = _embed_final(cfg, model, test) if test_embeddings is None else test_embeddings
        t_scores, t_same, _ = neighbour_pairs(embeddings, test.labels, k, sim, query_mask=query_mask(test.splits))
    except ValueError as err:  # (e.g. one test class: no negative pair to decide on)
        log.warning("The match flag is not measured on the test classes: %s", err)
    else:
        on_test = evaluate_threshold(t_scores, t_same, found.threshold)
        record.update(test_precision=on_test["precision"], test_recall=on_test["recall"],
                      test_accepted_share=on_test["accepted_share"],
                      test_positive_pair_share=on_test["positive_pair_share"], test_pairs=on_test["num_pairs"])
    log.info("Match threshold: score >= %.4f, with precision %.3f and recall %.3f on the validation pairs (%s nearest "
             "of each image; %.1f%% of them of one class)%s.", found.threshold, found.precision, found.recall, found.k,
             100 * share, "" if "test_pairs" not in record else
             ", precision {} and recall {} on the test classes' pairs ({:.1%} of them of one class)".format(
                 *(f"{v:.3f}" if v is not None else "n/a" for v in (record["test_precision"], record["test_recall"])),
                 record["test_positive_pair_share"]))
    return record


def _index_format(index_dir: Path) -> Optional[str]:
    """The format index.json declares, or None (missing or unreadable)."""
    try:
        meta = json.loads((index_dir / "index.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("format") if isinstance(meta, dict) else None


def export_stage(cfg: Config, run_dir: Path, model: keras.Model, metrics: dict, split,
                 test_embeddings: Optional[np.ndarray] = None) -> tuple[Optional[Path], Optional[Path]]:
    """Exports `model` (`runs.final_model`) as a new SavedModel version with the index of the
    held-out gallery inside.

    The index is built from the embeddings the SavedModel being exported computes (before
    it is published, in the same atomic step). If the latest version already holds the same
    function with the same export and index settings, it is reused: re-running a finished
    run publishes no identical version for TF Serving to load.

    With `export.calibration` on, `calibration_stage`'s record (the match threshold, or why there
    is none) goes to the export's export.json and to `metrics` and metrics.json as "calibration" (a
    reused version's own). `test_embeddings`: `model`'s embeddings of `split.test`, which the
    calibration measures its flag on (None: embedded again).

    Returns:
        `(export_dir, index_dir)`; None for what is disabled.
    """
    if not cfg.export.enabled:
        return None, None
    name = cfg.export.name or cfg.run.name
    # The input side of the exported function; written so that the default settings hash as
    # exports that did not have the later ones, and an unchanged model is not exported again.
    inputs = cfg.model.image_size if cfg.model.center_crop == 1 else (cfg.model.image_size, cfg.model.center_crop)
    if cfg.export.max_pixels != config_lib.ExportConfig.max_pixels:
        inputs = (inputs, cfg.export.max_pixels)
    settings = [config_lib.to_dict(cfg.index), cfg.eval.similarity]
    e = cfg.export
    if e.calibration != "off":  # what the threshold depends on besides the weights and the index's k
        settings.append({"calibration": e.calibration, "val_fraction": cfg.train.val_fraction, "seed": cfg.train.seed,
                         "version": CALIBRATION_VERSION,
                         **({"precision": e.calibration_precision} if e.calibration != "f1" else {})})
    content = _hash([np.asarray(w) for w in model.get_weights()], model.name, inputs, *settings)

    def record(calibration: Optional[dict]) -> None:  # metrics.json's "calibration": the export's
        if calibration is not None:
            metrics["calibration"] = calibration
            write_json(run_dir / "metrics.json", metrics)

    remove_leftovers(Path(cfg.export.root) / name)  # of killed exports, even when no new version follows
    latest = latest_version(Path(cfg.export.root) / name)
    index_dir = META_DIR / "index"
    if latest is not None:
        meta_file = latest / META_DIR / "export.json"
        current = not cfg.index.enabled or _index_format(latest / index_dir) == storage.FORMAT  # else export again
        meta = json.loads(meta_file.read_text()) if current and meta_file.is_file() else {}
        if current and meta.get("content_hash") == content:
            log.info("%s already holds this model and index; no new version exported.", latest)
            record(meta.get("calibration"))
            return latest, (latest / index_dir if cfg.index.enabled else None)

    calibration = calibration_stage(cfg, model, split, test_embeddings)
    record(calibration)

    sim, test = cfg.eval.similarity, split.test
    queries = query_mask(test.splits)
    if queries is not None:  # In-Shop: the index holds the gallery, not the queries
        test = test.subset(np.flatnonzero(~queries))

    def write_index(export_dir: Path):
        if not cfg.index.enabled:
            return
        log.info("Building the %s index of %s held-out images...",
                 "Hamming" if cfg.model.head == "hash" else "ScaNN", f"{len(test):,}")
        ic = cfg.index
        gallery = embed_export(export_dir, test, cfg.eval.batch_size, progress=False)
        if cfg.model.head == "hash":  # the packed codes, searched by Hamming distance
            searcher, params = build_hamming(gallery, ic.num_neighbors, ic.target_recall, ic.hamming_exact_below)
        else:
            searcher, params = float_search.build(gallery, sim, **float_search.build_options(ic))
        params["built_size"] = len(test)
        paths = None if test.paths is None else np.array([str(Path(p).resolve()) for p in test.paths])
        # The export that holds it, identified by its files (`content` is only this stage's reuse key).
        model = {"path": None, "name": name, "version": None, "embedding_dim": int(gallery.shape[1]),
                 "similarity": sim, "fingerprint": model_fingerprint(export_dir)}
        storage.save(export_dir / index_dir, searcher, params, catalogue_ids(test), test.labels,
                         split.dataset.class_names, sim, images=test.images, paths=paths, atomic=False, model=model)

    log.info("Exporting the SavedModel to %s...", Path(cfg.export.root) / name)
    export_dir = export_embedder(
        model, cfg.export.root, name, cfg.model.image_size, center_crop=cfg.model.center_crop,
        binary_codes=cfg.model.head == "hash", max_pixels=cfg.export.max_pixels,
        metadata={"run_dir": str(run_dir), "similarity": sim, "config": config_lib.to_dict(cfg),
                  "content_hash": content, **({"calibration": calibration} if calibration is not None else {}),
                  "metrics": {k: v for k, v in metrics.items() if k not in ("baselines", "unwhitened", "calibration")}},
        write_extras=write_index)
    return export_dir, (export_dir / index_dir if cfg.index.enabled else None)

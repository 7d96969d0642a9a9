"""`evaluate(model, data=... | query=..., gallery=...)`: a trained model's retrieval quality on
any images the data layer reads.

    the model (`open_model`): an export `saved_models/<name>/<version>` (its `serve_images`,
      image size, centre crop, similarity), or a run folder `runs/<name>` (its latest
      checkpoint, with the run's whitening when it was fitted on that checkpoint), or one
      checkpoint file `runs/<name>/checkpoints/epoch-NNNN.keras` (that embedder, unwhitened)
      -> images: one set (`data`: each image queries all the others, or its own query/gallery
         split such as In-Shop's), or a query set against a gallery set (`query`, `gallery`;
         classes matched by name); a run's own held-out classes when no data is given
      -> embedded in order with the model's preprocessing, with a progress bar
      -> `retrieval_metrics` (exact, blockwise, bounded memory, with a progress bar over the
         queries): Recall@K, precision@K, R-precision, MAP@R, mAP over the whole ranking, with a
         per-class breakdown; NMI and AMI of k-means clusters (`clustering_metrics`)
      -> `<out>/metrics.json` and `<out>/metrics.md` (the table, then the classes worst first;
         `tfsim.evaluation.report`)

The evaluate command's library: it sits in `training` because it opens run folders
(`tfsim.runs`), exports (`tfsim.export`) and a run's own split of its data.

A data spec is a folder (`<dir>/<class>/<image>`), a list file (see `tfsim.data.lists`),
`tfds:NAME[:SPLIT]`, or `default` (the shipped set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from tfsim import config as config_lib
from tfsim import runs
from tfsim.data.formats import DEFAULT_MAX_PIXELS
from tfsim.data.sources import ImageSet
from tfsim.data.specs import load_source
from tfsim.errors import UserInputError
from tfsim.evaluation.metrics import clustering_metrics, query_mask, retrieval_metrics
from tfsim.evaluation.report import write_report
from tfsim.export.embed import embed_export, export_max_pixels
from tfsim.export.saved_model import read_export
from tfsim.index.hamming import hamming_metrics
from tfsim.index.quality import ann_metrics
from tfsim.training.task import Task, load_split

# Above these sizes the costly metrics are skipped (and the report says so): mAP sorts every
# gallery item for every query; k-means runs with one cluster per class.
MAX_FULL_RANKING = 50_000
MAX_CLUSTERS = 1_000


@dataclass
class ModelToEvaluate:
    """What `open_model` found: how to embed images, and what to report about the model.

    Attributes:
        kind: "export" or "checkpoint".
        path: the export folder, or the checkpoint file.
        similarity: the similarity the model was trained and evaluated with.
        embed: `embed(images, batch_size, progress) -> [N, D] float32`, row-aligned with `images`.
        details: reported with the metrics (checkpoint, whitening, ...).
        run_dir: the run folder of a checkpoint (its config gives the default data), else None.
    """

    kind: str
    path: Path
    similarity: str
    embed: Callable[[ImageSet, int, bool], np.ndarray]
    details: dict = field(default_factory=dict)
    run_dir: Optional[Path] = None
    binary_codes: bool = False  # a hashing model (`model.head=hash`): also Hamming metrics
    # The largest image (width x height) its data is decoded at: the export's limit, or the
    # run's data.max_pixels.
    max_pixels: int = DEFAULT_MAX_PIXELS


def _run_of_checkpoint(path: Path) -> Optional[Path]:
    """The run folder of `runs/<name>/checkpoints/<file>.keras`, or None."""
    run_dir = path.parent.parent
    if path.suffix == ".keras" and path.parent.name == "checkpoints" and (run_dir / "config.json").is_file():
        return run_dir
    return None


def open_model(path: os.PathLike) -> ModelToEvaluate:
    """An export, a run folder (its latest checkpoint) or a checkpoint file, ready to embed.

    Raises:
        UserInputError: `path` is none of these, or a run folder without a checkpoint yet.
    """
    path = Path(path)
    if (path / "saved_model.pb").is_file() or not ((path / "config.json").is_file() or _run_of_checkpoint(path)):
        meta = read_export(path)  # raises the "not a tfsim export" error, with the versions it holds
        return ModelToEvaluate("export", path, meta.get("similarity", "cosine"),
                               lambda images, batch_size, progress: embed_export(path, images, batch_size, progress),
                               {"name": meta.get("name"), "version": path.name},
                               binary_codes=bool(meta.get("binary_codes", False)),
                               max_pixels=export_max_pixels(path))
    if path.is_dir():
        run_dir = path
        latest, skipped = runs.choose_checkpoint(run_dir / "checkpoints", partial=False)
        if latest is None and skipped:
            raise runs.no_valid_checkpoint(run_dir / "checkpoints", skipped, "Run the same train command again to "
                                           "retrain them, or pass an export.")
        if latest is None:
            raise UserInputError(f"Run folder {str(run_dir)!r} holds no checkpoint yet (checkpoints/epoch-NNNN.keras "
                                 "is written at the end of each epoch): train it first, or pass an export.")
        runs.log_skipped(skipped, latest[0])
        checkpoint = Path(latest[0])
    else:
        run_dir, checkpoint = _run_of_checkpoint(path), path
    cfg = config_lib.load(str(run_dir / "config.json"))
    embedder = runs.load_embedder(checkpoint)
    whitening = runs.read_whitening(run_dir, checkpoint) if cfg.whitening.enabled else None
    model = runs.final_model(embedder, whitening)
    if whitening is not None:
        note = "applied (fitted on this checkpoint)"
    elif cfg.whitening.enabled == "auto":
        note = ("not applied: whitening.enabled=auto chose none for this checkpoint, or it was not fitted on it (the "
                "run had not finished, or an earlier epoch)")
    elif cfg.whitening.enabled:
        note = "not applied: it was not fitted on this checkpoint (the run had not finished, or an earlier epoch)"
    else:
        note = "off in the run's config"
    return ModelToEvaluate(
        "checkpoint", checkpoint, cfg.eval.similarity,
        lambda images, batch_size, progress: Task(cfg).embed(model, images, int(progress), batch_size),
        {"run": str(run_dir.resolve()), "checkpoint": checkpoint.name, "whitening": note}, run_dir,
        binary_codes=cfg.model.head == "hash", max_pixels=cfg.data.max_pixels)


def run_test_set(run_dir: Path) -> ImageSet:
    """The held-out classes of a run, as its config splits its data."""
    return load_split(config_lib.load(str(run_dir / "config.json"))).test


def _merge(query: ImageSet, gallery: ImageSet) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels of both sets in one space of class names."""
    names = sorted(set(query.class_names) | set(gallery.class_names))
    index = {n: i for i, n in enumerate(names)}
    q = np.array([index[query.class_names[c]] for c in query.labels])
    g = np.array([index[gallery.class_names[c]] for c in gallery.labels])
    if not np.isin(q, g).any():
        raise UserInputError("No query class is in the gallery: classes are matched by name (folder or label), "
                             f"and the query set has {list(query.class_names)[:5]}..., the gallery "
                             f"{list(gallery.class_names)[:5]}...")
    return q, g, names


def assess_embeddings(embeddings: np.ndarray, labels: np.ndarray, names: Sequence[str], similarity: str,
                      mask: Optional[np.ndarray] = None, ks: Sequence[int] = (1, 2, 4, 8), binary_codes: bool = False,
                      ann: bool = False, progress: bool = True) -> dict:
    """The metrics `evaluate` reports for embeddings already computed (by an export, or read from
    embedding shards, `tfsim.catalogue`): Recall@K, MAP@R (a gallery up to MAX_FULL_RANKING ranked
    whole), per class by name, NMI/AMI up to MAX_CLUSTERS classes, Hamming metrics for a hashing
    model, and with `ann` those of a ScaNN index. `mask`: the queries (None: each item queries
    all the others)."""
    gallery_size = len(labels) if mask is None else int((~mask).sum())
    full = gallery_size <= MAX_FULL_RANKING
    metrics = retrieval_metrics(embeddings, labels, ks, similarity, query_mask=mask, per_class=True,
                                full_ranking=full, progress=progress)
    metrics["per_class"] = {names[c]: v for c, v in metrics["per_class"].items()}
    skipped = [] if full else [f"map: a gallery of {gallery_size} items (> {MAX_FULL_RANKING}) is not ranked whole"]
    num_classes = len(np.unique(labels))
    if num_classes <= MAX_CLUSTERS:
        metrics.update(clustering_metrics(embeddings, labels))
    else:
        skipped.append(f"nmi, ami: k-means with {num_classes} clusters (> {MAX_CLUSTERS}) is too slow")
    metrics["skipped"] = skipped
    if binary_codes:  # the packed codes ranked by Hamming distance (`tfsim.index.hamming`)
        metrics["hamming"] = hamming_metrics(embeddings, labels, mask)
    if ann:  # the same metrics from a ScaNN index of the gallery, with the gap to exact on a sample
        metrics["ann"] = ann_metrics(embeddings, labels, ks, similarity, query_mask=mask, progress=progress)
    return metrics


def evaluate(model_path: os.PathLike, data: Optional[str] = None, query: Optional[str] = None,
             gallery: Optional[str] = None, ks: Sequence[int] = (1, 2, 4, 8),
             out: Optional[os.PathLike] = None, batch_size: int = 256, progress: bool = True,
             ann: bool = False, max_pixels: Optional[int] = None) -> dict:
    """Retrieval metrics of a model (`open_model`) on `data`, or of `query` against `gallery`, or
    (a run's checkpoint, no data given) on the run's held-out classes (see module doc).

    `max_pixels`: images whose header declares more pixels are skipped undecoded (default: the
    model's limit, `ModelToEvaluate.max_pixels`).

    Returns:
        The metrics (`retrieval_metrics` keys, "per_class" by class name, "protocol", the
        model and data; "skipped_files": the image files not evaluated, with the reason; with
        `ann`, "ann": the same from a ScaNN index and their "gap" to exact search on a sample),
        also written to `out` when given.

    Raises:
        UserInputError: not a model, an unreadable data spec, or both/neither of `data`
            and `query` + `gallery` (neither is fine for a run's checkpoint).
    """
    two_sets = query is not None or gallery is not None
    if (data is not None and two_sets) or (query is None) != (gallery is None):
        raise UserInputError("Give either --data (one set) or --query and --gallery (two sets).")
    model = open_model(model_path)
    if data is None and not two_sets and model.run_dir is None:
        raise UserInputError("Give --data (one set) or --query and --gallery (two sets): an export has no held-out "
                             "classes of its own (a run folder or checkpoint is evaluated on its run's).")
    similarity = model.similarity
    limit = max_pixels or model.max_pixels
    if data is not None or query is None:
        images = load_source(data, limit) if data is not None else run_test_set(model.run_dir)
        loaded = [images]
        embeddings = model.embed(images, batch_size, progress)
        labels, names = images.labels, list(images.class_names)
        mask = query_mask(images.splits)
    else:
        q_set, g_set = load_source(query, limit), load_source(gallery, limit)
        loaded = [q_set, g_set]
        q_labels, g_labels, names = _merge(q_set, g_set)
        embeddings = np.concatenate([model.embed(q_set, batch_size, progress),
                                     model.embed(g_set, batch_size, progress)])
        labels = np.concatenate([q_labels, g_labels])
        mask = np.concatenate([np.ones(len(q_set), bool), np.zeros(len(g_set), bool)])
    metrics = assess_embeddings(embeddings, labels, names, similarity, mask, ks, model.binary_codes, ann, progress)
    metrics["skipped_files"] = [f for s in loaded for f in (s.report or {}).get("skipped", [])]
    if data is None and query is None:
        data = f"the held-out classes of {model.run_dir}"
    metrics.update(protocol="leave_one_out" if mask is None else "query_gallery", similarity=similarity,
                   model=str(Path(model_path).resolve()), model_kind=model.kind, model_details=model.details,
                   data=data, query=query, gallery=gallery)
    if out is not None:
        write_report(Path(out), metrics, ks)
    return metrics

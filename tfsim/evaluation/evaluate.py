"""`evaluate_export(model, data=... | query=..., gallery=...)`: an exported model's retrieval quality
on any images the data layer reads.

    the export (`read_export`: image size, centre crop, similarity)
      -> images: one set (`data`: each image queries all the others, or its own query/gallery
         split such as In-Shop's), or a query set against a gallery set (`query`, `gallery`;
         classes matched by name)
      -> embedded by the export's own `serve_images` function (the model TF Serving serves),
         with a progress bar
      -> `retrieval_metrics` (exact, blockwise, bounded memory): Recall@K, precision@K,
         R-precision, MAP@R, mAP over the whole ranking, with a per-class breakdown; NMI and AMI
         of k-means clusters (`clustering_metrics`)
      -> `<out>/metrics.json` and `<out>/metrics.md` (the table, then the classes worst first)

A data spec is a folder (`<dir>/<class>/<image>`), a list file (see `tfsim.data.lists`),
`tfds:NAME[:SPLIT]`, or `default` (the shipped set).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tfsim.data import lists, sources
from tfsim.data.sources import ImageSet
from tfsim.errors import UserInputError
from tfsim.evaluation.metrics import ann_metrics, clustering_metrics, query_mask, retrieval_metrics

# Above these sizes the costly metrics are skipped (and the report says so): mAP sorts every
# gallery item for every query; k-means runs with one cluster per class.
MAX_FULL_RANKING = 50_000
MAX_CLUSTERS = 1_000


def load_source(spec: str) -> ImageSet:
    """The images named by a data spec (see the module doc)."""
    if spec == "default":
        return sources.load_default()
    if spec.startswith("tfds:"):
        parts = spec.split(":")
        return sources.load_tfds(parts[1], parts[2] if len(parts) > 2 else "train+test")
    path = Path(spec).expanduser()
    if path.is_dir():
        return sources.load_folder(str(path))
    if path.is_file():
        return lists.load_list(str(path))
    raise UserInputError(f"Invalid data {spec!r}: expected a folder <dir>/<class>/<image>, a list file, "
                         "tfds:NAME[:SPLIT] or default.")


def embed_export(model_dir: os.PathLike, images: ImageSet, batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """`[N, D]` embeddings of `images` by the export's `serve_images` (its preprocessing: size, crop)."""
    import keras
    import tensorflow as tf

    from tfsim.data import pipeline
    from tfsim.export import read_export

    meta = read_export(model_dir)
    serve = tf.saved_model.load(str(model_dir)).signatures["serve_images"]
    dataset = pipeline.eval_dataset(images, meta["image_size"], batch_size, meta.get("center_crop", 1.0))
    bar = keras.utils.Progbar(len(images), unit_name="image") if progress else None
    out = []
    for batch in dataset:
        out.append(serve(images=batch)["embeddings"].numpy())
        if bar is not None:
            bar.add(len(out[-1]))
    return np.concatenate(out).astype(np.float32)


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


def evaluate_export(model_dir: os.PathLike, data: Optional[str] = None, query: Optional[str] = None,
                    gallery: Optional[str] = None, ks: Sequence[int] = (1, 2, 4, 8),
                    out: Optional[os.PathLike] = None, batch_size: int = 256, progress: bool = True,
                    ann: bool = False) -> dict:
    """Retrieval metrics of an export on `data`, or of `query` against `gallery` (see module doc).

    Returns:
        The metrics (`retrieval_metrics` keys, "per_class" by class name, "protocol", the
        model and data; with `ann`, "ann": the same from a ScaNN index and their "gap" to exact
        search on a sample), also written to `out` when given.

    Raises:
        UserInputError: not an export, an unreadable data spec, or both/neither of `data`
            and `query` + `gallery`.
    """
    from tfsim.export import read_export

    if (data is None) == (query is None or gallery is None) or (query is None) != (gallery is None):
        raise UserInputError("Give either --data (one set) or --query and --gallery (two sets).")
    meta = read_export(model_dir)
    similarity = meta.get("similarity", "cosine")
    if data is not None:
        images = load_source(data)
        embeddings = embed_export(model_dir, images, batch_size, progress)
        labels, names = images.labels, list(images.class_names)
        mask = query_mask(images.splits)
    else:
        q_set, g_set = load_source(query), load_source(gallery)
        q_labels, g_labels, names = _merge(q_set, g_set)
        embeddings = np.concatenate([embed_export(model_dir, q_set, batch_size, progress),
                                     embed_export(model_dir, g_set, batch_size, progress)])
        labels = np.concatenate([q_labels, g_labels])
        mask = np.concatenate([np.ones(len(q_set), bool), np.zeros(len(g_set), bool)])
    gallery_size = len(labels) if mask is None else int((~mask).sum())
    full = gallery_size <= MAX_FULL_RANKING
    metrics = retrieval_metrics(embeddings, labels, ks, similarity, query_mask=mask, per_class=True,
                                full_ranking=full)
    metrics["per_class"] = {names[c]: v for c, v in metrics["per_class"].items()}
    skipped = [] if full else [f"map: a gallery of {gallery_size} items (> {MAX_FULL_RANKING}) is not ranked whole"]
    num_classes = len(np.unique(labels))
    if num_classes <= MAX_CLUSTERS:
        metrics.update(clustering_metrics(embeddings, labels))
    else:
        skipped.append(f"nmi, ami: k-means with {num_classes} clusters (> {MAX_CLUSTERS}) is too slow")
    metrics["skipped"] = skipped
    if ann:  # the same metrics from a ScaNN index of the gallery, with the gap to exact on a sample
        metrics["ann"] = ann_metrics(embeddings, labels, ks, similarity, query_mask=mask)
    metrics.update(protocol="leave_one_out" if mask is None else "query_gallery", similarity=similarity,
                   model=str(Path(model_dir).resolve()), data=data, query=query, gallery=gallery)
    if out is not None:
        write_report(Path(out), metrics, ks)
    return metrics


def write_report(out: Path, metrics: dict, ks: Sequence[int]) -> None:
    """`metrics.json` and `metrics.md` (the table, then every class, worst MAP@R first)."""
    from tfsim.training.stages import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    cols = [f"recall@{k}" for k in ks] + ["map@r", "r_precision"] + [
        c for c in ("map", "nmi", "ami") if c in metrics]
    lines = [f"Model `{metrics['model']}` on `{metrics['data'] or metrics['query'] + ' vs ' + metrics['gallery']}` "
             f"({metrics['protocol']}, {metrics['num_queries']} queries, {metrics['similarity']}).", "",
             "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols),
             "| " + " | ".join(f"{metrics[c]:.4f}" for c in cols) + " |", "",
             "Per class, worst MAP@R first:", "", "| class | queries | recall@1 | map@r |", "| --- | --- | --- | --- |"]
    for name, m in sorted(metrics["per_class"].items(), key=lambda item: (item[1]["map@r"], item[0])):
        lines.append(f"| {name} | {m['queries']} | {m['recall@1']:.4f} | {m['map@r']:.4f} |")
    tmp = out / ".metrics.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / "metrics.md")

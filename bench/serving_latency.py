"""Latency of the retrieval SavedModels at 100,000 gallery items, as a server would see it.

An embedder export (the default small ResNet, 28 px, 64-d) and an index of 100,000 random
unit vectors standing for a catalogue's embeddings (built with tfsim's self-tuned ScaNN
index); `tfsim.export.retrieval.export_retrieval` writes the exact and the ScaNN SavedModel.
Each is loaded in this process (after `import scann`), its warm-up records replayed, then
timed on 200 single-image requests and 30 batches of 100 images: p50 and p99 of the whole
call, and of the embedding alone (the embedder's own signature on the same bytes), the search
part being the difference. One process, one run, 2 cores.

    python bench/serving_latency.py        # ~3 min
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    import scann  # noqa: F401  (the ScaNN ops, before loading the ScaNN SavedModel)
    import tensorflow as tf

    from tfsim.export import export_embedder
    from tfsim.export.retrieval import export_retrieval
    from tfsim.export import identity
    from tfsim.index import float_search, storage
    from tfsim.models import build_embedding_model

    work = Path(tempfile.mkdtemp(prefix="tfsim-latency-"))
    model = build_embedding_model("small_resnet", 28, 64, seed=0)
    embedder_dir = export_embedder(model, work / "models", "bench", 28, metadata={"similarity": "cosine"})
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, 64))
    gallery = centres[rng.integers(0, 1000, 100_000)] + 0.5 / 8 * rng.normal(size=(100_000, 64))
    gallery = (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).astype(np.float32)
    searcher, params = float_search.build(gallery, "cosine", num_neighbors=10)
    index_dir = storage.save(work / "idx", searcher, params, np.arange(100_000).astype(str),
                             np.zeros(100_000, np.int32), ("item",), "cosine",
                             model=identity.model_info(embedder_dir))
    exports = export_retrieval(embedder_dir, index_dir, work / "models", k=10)
    print(f"index: {params['mode']}, {params.get('num_leaves')} leaves, {params.get('num_leaves_to_search')} "
          f"searched, reorder {params.get('reorder')}, sample recall@10 {params.get('measured_recall', 1):.3f}")

    pictures = [tf.io.encode_png(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).numpy() for _ in range(100)]
    one = [tf.constant([pictures[i % 100]]) for i in range(200)]
    batch = tf.constant(pictures)
    embed = tf.saved_model.load(str(embedder_dir)).signatures["serving_default"]

    def timed(fn, inputs) -> list[float]:
        out = []
        for x in inputs:
            start = time.perf_counter()
            fn(image_bytes=x)
            out.append(time.perf_counter() - start)
        return out

    for x in one[:5] + [batch]:  # the embedder's own warm-up
        embed(image_bytes=x)
    embed_one, embed_batch = percentiles(timed(embed, one)), percentiles(timed(embed, [batch] * 30))
    print("\n| SavedModel | request | whole p50 ms | whole p99 ms | embedding p50 ms | search p50 ms (difference) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, path in exports.items():
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        start = time.perf_counter()
        for record in tf.data.TFRecordDataset(str(path / "assets.extra" / "tf_serving_warmup_requests")):
            from tensorflow_serving.apis import prediction_log_pb2
            request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
            serve(image_bytes=tf.constant(tf.make_ndarray(request.inputs["image_bytes"])))
        warm = time.perf_counter() - start
        for name, inputs, base in (("1 image", one, embed_one), ("batch of 100", [batch] * 30, embed_batch)):
            p50, p99 = percentiles(timed(serve, inputs))
            print(f"| {kind} | {name} | {p50:.2f} | {p99:.2f} | {base[0]:.2f} | {p50 - base[0]:.2f} |")
        print(f"| {kind} | warm-up replay (first calls) | {warm * 1000:.0f} ms in all | | | |")


if __name__ == "__main__":
    main()

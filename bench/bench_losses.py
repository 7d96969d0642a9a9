"""Forward+backward time of each registered loss, as a ratio to softmax cross-entropy.

For batch sizes 64, 256, 1024 and embedding dims 128, 512: time one forward+backward
of the loss w.r.t. the embeddings (compiled with tf.function, after a warm-up), and of
a plain softmax cross-entropy over 100 classes on the same batch (a linear layer on
the embeddings). Proxy losses (normalized softmax, Proxy-NCA) include their
`CosineProxies` layer over the same 100 classes (gradients to embeddings and proxies);
the explicit-triplet loss takes the largest multiple of 3 rows <= B. Ratios are measured in the same run,
interleaved, so machine noise
affects both sides alike.

    python bench/bench_losses.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfsim.losses import LOSSES, input_kind  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # trace + warm up
    best = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best.append(time.perf_counter() - start)
    return float(np.median(best))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'loss':<18}{'B':>6}{'D':>6}{'ms':>10}{'softmax ms':>12}{'ratio':>8}")
    for b in (64, 256, 1024):
        for d in (128, 512):
            x = tf.Variable(rng.normal(size=(b, d)).astype(np.float32))
            labels = tf.constant(np.repeat(np.arange(b // 4), 4).astype(np.int32))
            w = tf.Variable(rng.normal(size=(d, 100)).astype(np.float32) * 0.01)
            cls_labels = labels % 100

            @tf.function
            def softmax_step():
                with tf.GradientTape() as tape:
                    logits = tf.matmul(x, w)
                    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(cls_labels, logits))
                return tape.gradient(loss, [x, w])

            for name, cls in LOSSES.items():
                loss_obj, kind = cls(), input_kind(name)

                @tf.function
                def loss_step():
                    with tf.GradientTape() as tape:
                        if kind == "proxy_similarities":
                            sims = tf.matmul(tf.math.l2_normalize(x, 1), tf.math.l2_normalize(w, 0))
                            loss = loss_obj(cls_labels, sims)
                        elif kind == "triplets":
                            rows = 3 * (b // 3)
                            loss = loss_obj(labels[:rows], x[:rows])
                        else:
                            loss = loss_obj(labels, x)
                    return tape.gradient(loss, [x, w] if kind == "proxy_similarities" else x)

                t_loss = timed(loss_step, args.repeats)
                t_ref = timed(softmax_step, args.repeats)
                print(f"{name:<18}{b:>6}{d:>6}{t_loss * 1e3:>10.3f}{t_ref * 1e3:>12.3f}{t_loss / t_ref:>8.2f}",
                      flush=True)


if __name__ == "__main__":
    main()

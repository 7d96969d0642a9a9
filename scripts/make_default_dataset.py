"""Builds the embedded default dataset shipped in `tfsim/data/assets/`.

A class-balanced subset of Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017; MIT
licence, (c) 2017 Zalando SE): the first `--per-class` images of each of the
10 classes, in file order, from the official *training* split. Images stay
28x28 uint8 grey; the file is a compressed npz of a few MB.

Run once, from the repository root, on a machine with Debian's
`dataset-fashion-mnist` package (`apt-get install -y dataset-fashion-mnist`):

    python scripts/make_default_dataset.py
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parents[1] / "tfsim" / "data" / "assets"


def read_idx(path: Path) -> np.ndarray:
    """Reads a gzipped IDX file: magic (last byte = ndim), big-endian uint32 sizes, uint8 data."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=600)
    args = parser.parse_args()
    images = read_idx(SOURCE / "train-images-idx3-ubyte.gz")
    labels = read_idx(SOURCE / "train-labels-idx1-ubyte.gz")
    rows = np.concatenate(
        [np.flatnonzero(labels == c)[: args.per_class] for c in range(len(CLASS_NAMES))])
    rows.sort()  # keep the original file order, classes interleaved as in the source
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "fashion_mnist_small.npz"
    np.savez_compressed(
        out,
        images=images[rows][..., None],  # [N, 28, 28, 1] uint8
        labels=labels[rows].astype(np.int32),
        source_index=rows.astype(np.int32),  # row in the original train split
        class_names=np.array(CLASS_NAMES),
    )
    info = {
        "name": "fashion_mnist_small",
        "description": f"Class-balanced subset of Fashion-MNIST: the first {args.per_class} "
                       "images of each class of the official training split.",
        "num_images": int(rows.size),
        "per_class": args.per_class,
        "class_names": list(CLASS_NAMES),
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "source": "https://github.com/zalandoresearch/fashion-mnist (Debian package dataset-fashion-mnist)",
        "license": "MIT, Copyright (c) 2017 Zalando SE",
        "citation": "Han Xiao, Kashif Rasul, Roland Vollgraf. Fashion-MNIST: a Novel Image "
                    "Dataset for Benchmarking Machine Learning Algorithms. arXiv:1708.07747, 2017.",
    }
    (OUT / "fashion_mnist_small.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {rows.size} images)")


if __name__ == "__main__":
    main()

"""Small image folders for tests: `<root>/<class>/<class>_<i>.png`, each class around its own colour."""

import numpy as np
import tensorflow as tf


def class_folders(root, classes, per_class, seed, noise=40, size=16):
    """Writes `per_class` noisy PNGs per class (a shared base colour per class); returns `root`."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, 3)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
            (root / c / f"{c}_{i}.png").write_bytes(tf.io.encode_png(img).numpy())
    return root

"""Class-disjoint train/test splits, as the metric-learning papers use them.

Retrieval is measured on classes never seen in training (CUB-200: classes
1-100 train, 101-200 test; Cars196: 1-98 / 99-196; SOP: 11,318 / 11,316).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from tfsim.data.sources import ImageSet
from tfsim.errors import UserInputError


def class_disjoint_split(images: ImageSet, test_classes: Sequence[int] = ()) -> tuple[ImageSet, ImageSet]:
    """Splits by class: `test_classes` held out, every other class for training.

    Args:
        images: the whole labelled set.
        test_classes: label indices held out for evaluation. Empty: the second half
            of the classes in label order (the CUB/Cars convention).

    Returns:
        `(train, test)` ImageSets with no class in common.

    Raises:
        UserInputError: unknown class indices, or a side left with fewer than 2 classes.
    """
    num_classes = len(images.class_names)
    present = np.unique(images.labels)
    if len(test_classes) == 0:
        test = present[len(present) // 2:]
    else:
        test = np.unique(np.asarray(test_classes, np.int64))
        bad = [int(c) for c in test if c not in present]
        if bad:
            raise UserInputError(
                f"Invalid value for `test_classes`: expected label indices in 0..{num_classes - 1} "
                f"present in the dataset. Received unknown classes {bad}.")
    train = np.setdiff1d(present, test)
    if len(train) < 2 or len(test) < 2:
        raise UserInputError(
            f"Invalid value for `test_classes`: expected at least 2 training and 2 held-out "
            f"classes. Received {len(train)} training and {len(test)} held-out classes.")
    is_test = np.isin(images.labels, test)
    return images.subset(np.flatnonzero(~is_test)), images.subset(np.flatnonzero(is_test))


def list_test_classes(images: ImageSet) -> Optional[np.ndarray]:
    """The test classes a list's published split defines, or None.

    A split that is class-disjoint (no class has both "train" images and others: SOP's
    train/test files, In-Shop's train vs query + gallery) defines them. A per-image split
    (CUB's `train_test_split.txt`, the classification split: every class on both sides)
    does not: None, and the metric-learning protocol (second half of the classes) applies.
    """
    if images.splits is None:
        return None
    is_train = images.splits == "train"
    train_classes, other_classes = np.unique(images.labels[is_train]), np.unique(images.labels[~is_train])
    if len(train_classes) == 0 or len(other_classes) == 0 or np.intersect1d(train_classes, other_classes).size:
        return None
    return other_classes


def random_test_classes(images: ImageSet, fraction: float, seed: int = 0) -> np.ndarray:
    """`round(fraction * classes)` classes (at least 2, leaving at least 2), drawn with `seed`."""
    present = np.unique(images.labels)
    count = min(max(2, int(round(fraction * len(present)))), len(present) - 2)
    if count < 2:
        raise UserInputError(f"Invalid value for `test_fraction`: {len(present)} classes cannot be split into at "
                             "least 2 training and 2 held-out classes.")
    return np.sort(np.random.default_rng(seed).choice(present, size=count, replace=False))


def validation_classes(train_labels: np.ndarray, fraction: float, seed: int = 0, classes: Sequence[int] = (),
                       keys: str = "tune.val_fraction / tune.val_classes") -> np.ndarray:
    """Label indices of validation classes carved from the training classes: `classes` if given
    (each must be a training class), else a seeded random `fraction` of them (at least 2); at
    least 2 classes are left to train on. `keys` names the config keys in errors."""
    present = np.unique(train_labels)
    if len(classes):
        chosen = np.unique(np.asarray(classes, np.int64))
        bad = [int(c) for c in chosen if c not in present]
        if bad:
            raise UserInputError(
                f"Invalid value for `{keys.split(' / ')[-1]}`: expected training classes (label indices "
                f"{present.tolist()}, not data.test_classes). Received {bad}.")
    else:
        count = max(2, int(round(fraction * len(present))))
        chosen = np.sort(np.random.default_rng(seed).choice(present, size=min(count, len(present)), replace=False))
    if len(chosen) < 2 or len(present) - len(chosen) < 2:
        raise UserInputError(
            f"Cannot carve validation classes from {len(present)} training classes: expected at least 2 "
            f"validation classes and 2 left to train on. Received {len(chosen)} validation classes "
            f"({keys}). This needs at least 4 training classes.")
    return chosen

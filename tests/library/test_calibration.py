"""`tfsim.calibration`: the threshold against a naive float64 loop (target precision and best F1,
k = 1 and 3), the precision reached on the data asked for, golden pairs, ties, the query / gallery
forms and the errors."""

import numpy as np
import pytest

import tfsim.calibration
from tfsim.calibration import calibrate, calibrate_pairs


def naive_pairs(x, labels, k):
    """Each row with its k nearest other rows by float64 cosine (ties: lower row first)."""
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = []
    for q in range(len(x)):
        order = sorted((j for j in range(len(x)) if j != q), key=lambda j: (-float(x[q] @ x[j]), j))
        pairs += [(float(x[q] @ x[j]), bool(labels[j] == labels[q])) for j in order[:k]]
    return pairs


def naive_threshold(pairs, target):
    """(threshold, precision, recall, f1) by trying every distinct score, one loop each."""
    positives = sum(same for _, same in pairs)
    rows = []
    for t in sorted({s for s, _ in pairs}, reverse=True):
        accepted = [same for s, same in pairs if s >= t]
        tp = sum(accepted)
        p, r = tp / len(accepted), tp / positives
        rows.append((t, p, r, 2 * p * r / (p + r) if tp else 0.0))
    if target is None:
        return max(rows, key=lambda row: row[3])  # the first (highest threshold) of equal F1
    return [row for row in rows if row[1] >= target][-1]  # the lowest threshold reaching the target


def blobs(seed, n=60, classes=5, spread=1.3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    return rng.normal(size=(classes, 6))[labels] + spread * rng.normal(size=(n, 6)), labels


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("target", [0.8, 0.95, None])
def test_matches_a_naive_loop_and_reaches_the_target_on_its_data(seed, k, target):
    x, labels = blobs(seed)
    res = calibrate(x, labels, precision=target, k=k, block_size=16)
    pairs = naive_pairs(x, labels, k)
    t, p, r, f1 = naive_threshold(pairs, target)
    assert res.threshold == pytest.approx(t, abs=1e-6)
    assert (res.precision, res.recall, res.f1) == pytest.approx((p, r, f1), abs=1e-12)
    assert res.num_pairs == len(pairs) == 60 * k and res.num_positive_pairs == sum(s for _, s in pairs)
    assert (res.k, res.num_queries, res.similarity, res.target_precision) == (k, 60, "cosine", target)
    # What the threshold decides on the calibration pairs themselves.
    accepted = [same for score, same in pairs if score >= res.threshold - 1e-7]
    if target is not None:
        assert sum(accepted) / len(accepted) >= target
    else:
        assert res.f1 == pytest.approx(max(res.curve.f1)) and res.f1 > 0
    assert res.curve.thresholds[0] == max(res.curve.thresholds)  # highest first


def test_golden_pairs_ties_and_matches():
    scores, same = [0.9, 0.8, 0.7, 0.6, 0.5], [True, True, False, True, False]
    # precision by threshold: 1, 1, 2/3, 3/4, 3/5; recall: 1/3, 2/3, 2/3, 1, 1; F1 best at 0.6 (6/7).
    assert calibrate_pairs(scores, same, 0.75).threshold == pytest.approx(0.6)
    assert calibrate_pairs(scores, same, 0.9).threshold == pytest.approx(0.8)
    best = calibrate_pairs(scores, same)
    assert best.threshold == pytest.approx(0.6) and best.f1 == pytest.approx(6 / 7) and best.recall == 1
    assert best.precision == 0.75 and best.num_pairs == 5 and best.num_positive_pairs == 3
    np.testing.assert_array_equal(best.matches([[0.61, 0.6], [0.59, 0.9]]), [[True, True], [False, True]])
    # Ties: a threshold accepts every pair of its score, so equal scores are decided together.
    tied = calibrate_pairs([0.9, 0.9, 0.5, 0.4], [True, False, True, False], precision=0.6)
    assert tied.threshold == pytest.approx(0.5) and tied.precision == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="highest precision any threshold reaches is 0.5000"):
        calibrate_pairs([0.9, 0.9, 0.5, 0.4], [True, False, False, True], precision=0.6)
    # No negative pair: every threshold is precise; the lowest keeps every pair.
    all_positive = calibrate_pairs([0.3, 0.2], [True, True], 0.9)
    assert all_positive.threshold == pytest.approx(0.2) and all_positive.recall == all_positive.precision == 1
    record = best.to_dict()
    assert record["rule"] == "match = score >= threshold" and "curve" not in record and record["f1"] == best.f1


def test_query_gallery_forms_agree_and_other_similarities():
    x, labels = blobs(2, n=50)
    mask = np.arange(50) < 20
    by_mask = calibrate(x, labels, 0.7, query_mask=mask, k=2)
    by_gallery = calibrate(x[mask], labels[mask], 0.7, gallery=(x[~mask], labels[~mask]), k=2)
    assert (by_mask.threshold, by_mask.precision, by_mask.recall) == (
        by_gallery.threshold, by_gallery.precision, by_gallery.recall)
    assert by_mask.num_queries == 20 and by_mask.num_pairs == 40
    l2 = calibrate(x, labels, similarity="L2")
    assert l2.threshold < 0 and l2.similarity == "L2"  # a negated distance: larger is closer
    pairs = [(-float(np.linalg.norm(x[q] - x[j])), labels[q] == labels[j]) for q in range(50)
             for j in [min((j for j in range(50) if j != q), key=lambda j: (np.linalg.norm(x[q] - x[j]), j))]]
    assert l2.threshold == pytest.approx(naive_threshold(pairs, None)[0], abs=1e-5)


def test_public_names():
    assert set(tfsim.calibration.__all__) == {"Calibration", "CalibrationCurve", "calibrate", "calibrate_pairs"}


@pytest.mark.parametrize("call,message", [
    (lambda x, y: calibrate(x, np.zeros(len(y))), "one class"),
    (lambda x, y: calibrate(x, np.arange(len(y))), "none of the 60 pairs is of one class"),
    (lambda x, y: calibrate(x, y, precision=1.5), r"precision in \(0, 1\]"),
    (lambda x, y: calibrate(x, y, precision=0), r"precision in \(0, 1\]"),
    (lambda x, y: calibrate(x, y, precision=True), r"precision in \(0, 1\]"),
    (lambda x, y: calibrate(x, y[:-1]), "one label per row"),
    (lambda x, y: calibrate(x, y, k=0), "`k`"),
    (lambda x, y: calibrate(x, y, similarity="euclid"), "distance"),
    (lambda x, y: calibrate(np.where(np.arange(60)[:, None] == 3, np.nan, x), y), "finite"),
    (lambda x, y: calibrate(x, y, query_mask=np.ones(60, bool), gallery=(x, y)), "not both"),
    (lambda x, y: calibrate_pairs([0.3, 0.2], [True]), "one flag per score"),
])
def test_clear_errors(call, message):
    x, y = blobs(0)
    with pytest.raises(ValueError, match=message):
        call(x, y)


def test_an_unreachable_target_says_what_is_reachable():
    x, labels = blobs(3, spread=4.0)  # classes that overlap: no threshold is that precise
    best = calibrate(x, labels, precision=None)
    top = float(np.max(best.curve.precision))
    if top >= 1:
        pytest.skip("this draw separates a pair perfectly")
    with pytest.raises(ValueError, match=f"No threshold reaches precision 1 .*is {top:.4f}"):
        calibrate(x, labels, precision=1.0)


# The pipeline's stage: validation classes carved from the training classes, the final model, the
# export's k; uncalibrated with a reason when it cannot be.

def class_split(train_classes=6, test_classes=2, per_class=6, noise=25.0, seed=0):
    from tfsim.data.sources import ImageSet
    from tfsim.training.task import Split

    rng = np.random.default_rng(seed)
    classes = train_classes + test_classes
    labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
    colours = rng.integers(0, 255, (classes, 3))
    images = np.clip(colours[labels][:, None, None, :] + rng.normal(0, noise, (len(labels), 28, 28, 3)), 0, 255)
    dataset = ImageSet(labels=labels, ids=np.arange(len(labels)).astype(str),
                       class_names=tuple(f"c{i}" for i in range(classes)), images=images.astype(np.uint8))
    is_train = labels < train_classes
    return Split(dataset, dataset.subset(np.flatnonzero(is_train)), dataset.subset(np.flatnonzero(~is_train)))


def pooled_embedder(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((28, 28, 3)), keras.layers.AveragePooling2D(7), keras.layers.Flatten(),
                             keras.layers.Dense(6), keras.layers.UnitNormalization()])


def test_the_stage_calibrates_the_final_model_on_validation_classes(caplog):
    from tfsim import config
    from tfsim.data import pipeline, splits
    from tfsim.models.whitening import with_whitening
    from tfsim.training import stages

    split = class_split()
    rng = np.random.default_rng(1)
    final = with_whitening(pooled_embedder(), rng.normal(size=6).astype(np.float32) * 0.1,
                           np.linalg.qr(rng.normal(size=(6, 6)))[0].astype(np.float32))
    cfg = config.load("default", ["index.num_neighbors=6"])  # (> 5 other images per class: negative pairs)
    record = stages.calibration_stage(cfg, final, split)
    # Independently: the validation classes train.select_best would carve, embedded by the whole model.
    val = splits.validation_classes(split.train.labels, cfg.train.val_fraction, cfg.train.seed, keys="x")
    rows = np.flatnonzero(np.isin(split.train.labels, val))
    emb = final.predict(pipeline.eval_dataset(split.train.subset(rows), 28), verbose=0)
    want = calibrate(emb, split.train.labels[rows], 0.9, k=6)
    assert record["threshold"] == pytest.approx(want.threshold, abs=1e-5)
    assert (record["precision"], record["recall"], record["num_pairs"]) == (want.precision, want.recall, len(rows) * 6)
    assert record["precision"] >= 0.9 and record["k"] == 6 and record["similarity"] == "cosine"
    assert record["validation_classes"] == [f"c{c}" for c in val] and record["validation_images"] == len(rows)
    assert record["trained_on_validation_classes"] is True and record["mode"] == "precision"
    assert not set(record["validation_classes"]) & {"c6", "c7"}  # never the test classes

    held_out = stages.calibration_stage(config.load("default", ["train.select_best=true", "export.calibration=f1"]),
                                        final, split)
    assert held_out["trained_on_validation_classes"] is False and held_out["target_precision"] is None
    assert held_out["f1"] == pytest.approx(max(calibrate(emb, split.train.labels[rows], k=10).curve.f1))
    assert stages.calibration_stage(config.load("default", ["export.calibration=off"]), final, split) is None

    with caplog.at_level("WARNING"):  # 3 training classes: no validation classes to carve
        few = stages.calibration_stage(cfg, final, class_split(train_classes=3))
    assert few["threshold"] is None and "too few training classes" in few["reason"]
    assert "not calibrated" in caplog.text and "at least 4 training classes" in caplog.text
    blurred = stages.calibration_stage(config.load("default", ["export.calibration_precision=1.0"]), final,
                                       class_split(noise=400.0))
    assert blurred["threshold"] is None and "No threshold reaches precision 1" in blurred["reason"]


@pytest.mark.slow  # (the session's tiny run)
def test_the_run_records_its_threshold_and_the_retrieval_export_flags_matches(tiny_run):
    import json

    import tensorflow as tf

    from tfsim import config
    from tfsim.export.embed import embed_export
    from tfsim.export.saved_model import read_export
    from tfsim.training.task import load_split, validation_split

    result = tiny_run.result
    record = json.loads((tiny_run.run_dir / "metrics.json").read_text())["calibration"]
    assert record == result.metrics["calibration"] == read_export(result.export_dir)["calibration"]
    assert record["mode"] == "precision" and record["target_precision"] == 0.9 and record["precision"] >= 0.9
    assert record["k"] == 10 and record["trained_on_validation_classes"] is True
    # The validation classes of the training classes, embedded by the export: the same threshold.
    cfg = config.load("default", tiny_run.sets)
    validation = validation_split(load_split(cfg), cfg.train.val_fraction, cfg.train.seed).test
    assert record["validation_classes"] == [validation.class_names[c] for c in np.unique(validation.labels)]
    assert not set(record["validation_classes"]) & set(result.test_classes)
    again = calibrate(embed_export(result.export_dir, validation, progress=False), validation.labels, 0.9, k=10)
    assert again.threshold == pytest.approx(record["threshold"], abs=1e-4)
    assert again.precision == pytest.approx(record["precision"], abs=2e-3)

    (exact,) = result.retrieval_dirs
    assert json.loads((exact / "assets.extra" / "tfsim" / "export.json").read_text())["calibration"] == record
    test = load_split(cfg).test  # the gallery: each query finds itself first, a match
    images = [tf.io.encode_png(np.asarray(img, np.uint8)).numpy() for img in test.load_images([0, 700, 1400])]
    out = tf.saved_model.load(str(exact)).signatures["serving_default"](image_bytes=tf.constant(images))
    match = out["match"].numpy()
    np.testing.assert_array_equal(match, out["scores"].numpy() >= np.float32(record["threshold"]))
    assert match[:, 0].all() and match.shape == (3, 10)


def test_which_threshold_a_retrieval_export_applies():
    import types

    from tfsim.errors import UserInputError
    from tfsim.export.retrieval import _match_calibration

    cosine = types.SimpleNamespace(similarity="cosine")
    calibrated = {"calibration": {"threshold": 0.5, "similarity": "cosine", "precision": 0.9}}
    assert _match_calibration(calibrated, cosine, None, codes=False) == calibrated["calibration"]
    assert _match_calibration(calibrated, types.SimpleNamespace(similarity="dot"), None, codes=False) is None
    assert _match_calibration(calibrated, cosine, None, codes=True) is None  # Hamming scores: another scale
    assert _match_calibration({}, cosine, None, codes=False) is None
    assert _match_calibration({"calibration": {"threshold": None, "reason": "x"}}, cosine, None, codes=False) is None
    given = _match_calibration(calibrated, cosine, -3, codes=True)  # given: applies to any kind
    assert given["threshold"] == -3.0 and given["source"] == "match_threshold" and given["similarity"] == "hamming"
    for bad in (float("nan"), "high", True):
        with pytest.raises(UserInputError, match="match_threshold"):
            _match_calibration({}, cosine, bad, codes=False)

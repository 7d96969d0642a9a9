"""`tfsim.calibration`: the threshold against a naive float64 loop (target precision and best F1,
k = 1 and 3), the precision reached on the data asked for, golden pairs, ties, the query / gallery
forms and the errors. The pipeline's stage: calibrated only on validation classes held out of
training (else uncalibrated with the reason), refused when it would say nothing, and measured on
the test classes (against naive loops and brute force); a default run and a select_best run."""

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


# The pipeline's stage: the validation classes train.select_best holds out of training, the final model,
# the export's k, then the flag on the test classes; uncalibrated with a reason when it cannot be.

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


def naive_decisions(x, labels, k, threshold, queries=None):
    """(precision, recall, accepted share, positive share) of `score >= threshold` on each query
    row's k nearest other rows (float64 cosine), by plain loops."""
    pairs = naive_pairs(x, labels, k)
    if queries is not None:
        pairs = [pair for i, pair in enumerate(pairs) if i // k in queries]
    accepted = [same for score, same in pairs if score >= threshold]
    positives = sum(same for _, same in pairs)
    return (sum(accepted) / len(accepted) if accepted else None, sum(accepted) / positives,
            len(accepted) / len(pairs), positives / len(pairs))


def test_evaluate_threshold_golden_pairs():
    from tfsim.evaluation.calibration import evaluate_threshold

    got = evaluate_threshold([0.9, 0.8, 0.7, 0.3], [True, False, True, True], 0.75)
    assert got == {"precision": 0.5, "recall": 1 / 3, "accepted_share": 0.5, "positive_pair_share": 0.75,
                   "num_pairs": 4, "num_positive_pairs": 3}
    none = evaluate_threshold([0.2, 0.1], [False, False], 0.5)
    assert none["precision"] is None and none["recall"] is None and none["accepted_share"] == 0
    with pytest.raises(ValueError, match="one flag per score"):
        evaluate_threshold([0.2], [True, False], 0.5)


def held_out_config(*sets):
    from tfsim import config

    # 6 training classes: val_fraction 0.5 holds out 3 (the fewest calibrated on), 6 neighbours of 6
    # images per class (at most 5 of one class: negative pairs).
    return config.load("default", ["train.select_best=true", "train.val_fraction=0.5", "index.num_neighbors=6",
                                   *sets])


def whitened_model():
    from tfsim.models.whitening import with_whitening

    rng = np.random.default_rng(1)
    return with_whitening(pooled_embedder(), rng.normal(size=6).astype(np.float32) * 0.1,
                          np.linalg.qr(rng.normal(size=(6, 6)))[0].astype(np.float32))


def test_the_stage_calibrates_on_held_out_classes_and_measures_the_test_classes(caplog):
    from tfsim.data import pipeline, splits
    from tfsim.training import stages

    # Classes that blur into one another (a draw where the test classes' precision is 0.65 for 0.9 on validation).
    split, final = class_split(test_classes=3, noise=150.0, seed=8), whitened_model()
    cfg = held_out_config()
    with caplog.at_level("INFO"):
        record = stages.calibration_stage(cfg, final, split)
    # Independently: the validation classes train.select_best carves, embedded by the whole model.
    val = splits.validation_classes(split.train.labels, 0.5, cfg.train.seed, keys="x")
    rows = np.flatnonzero(np.isin(split.train.labels, val))
    emb = final.predict(pipeline.eval_dataset(split.train.subset(rows), 28), verbose=0)
    want = calibrate(emb, split.train.labels[rows], 0.9, k=6)
    assert len(val) == 3 and record["threshold"] == pytest.approx(want.threshold, abs=1e-5)
    assert (record["precision"], record["recall"], record["num_pairs"]) == (want.precision, want.recall, len(rows) * 6)
    assert record["precision"] >= 0.9 and record["k"] == 6 and record["similarity"] == "cosine"
    assert record["mode"] == "auto" and record["target_precision"] == 0.9
    assert record["validation_classes"] == [f"c{c}" for c in val] and record["validation_images"] == len(rows)
    assert not set(record["validation_classes"]) & {"c6", "c7", "c8"}  # never the test classes
    assert record["positive_pair_share"] == want.num_positive_pairs / want.num_pairs < 0.9
    # The flag on the test classes' pairs (each test image with its 6 nearest others), by a naive loop.
    test_emb = final.predict(pipeline.eval_dataset(split.test, 28), verbose=0)
    precision, recall, accepted, positive = naive_decisions(test_emb, split.test.labels, 6, record["threshold"])
    assert record["test_precision"] == pytest.approx(precision, abs=1e-9)
    assert record["test_recall"] == pytest.approx(recall, abs=1e-9)
    assert 0 < record["test_precision"] < 0.9 and 0 < record["test_recall"] < 1
    assert (record["test_accepted_share"], record["test_positive_pair_share"]) == pytest.approx((accepted, positive))
    assert record["test_pairs"] == len(split.test) * 6 and "reason" not in record
    assert "held out of training" in caplog.text and "on the test classes' pairs" in caplog.text
    # The embeddings the evaluation already has give the same figures (no second pass).
    again = stages.calibration_stage(cfg, final, split, test_embeddings=test_emb)
    assert again["test_precision"] == record["test_precision"] and again["threshold"] == record["threshold"]

    best_f1 = stages.calibration_stage(held_out_config("export.calibration=f1"), final, split)
    assert best_f1["target_precision"] is None and best_f1["mode"] == "f1"
    assert best_f1["f1"] == pytest.approx(max(calibrate(emb, split.train.labels[rows], k=6).curve.f1))
    assert stages.calibration_stage(held_out_config("export.calibration=off"), final, split) is None


def test_the_stage_refuses_thresholds_that_would_say_nothing(caplog):
    from tfsim import config
    from tfsim.training import stages

    split, final = class_split(), whitened_model()
    with caplog.at_level("INFO"):  # the default: trained on every training class, nothing held out
        default = stages.calibration_stage(config.load("default"), final, split)
    assert default == {"mode": "auto", "target_precision": 0.9, "threshold": None, "reason": default["reason"]}
    assert "--set train.select_best=true --set train.val_fraction=0.5 " in default["reason"]  # (6 training classes)
    assert "not calibrated" in caplog.text and "train.select_best=true" in caplog.text

    two = stages.calibration_stage(held_out_config("train.val_fraction=0.25"), final, split)  # 2 of 6 held out
    assert two["threshold"] is None and "only 2 validation classes" in two["reason"]
    assert "train.val_fraction=0.5 (0.25 of 6 training classes holds out 2)" in two["reason"]
    few = stages.calibration_stage(held_out_config(), final, class_split(train_classes=4))
    assert few["threshold"] is None and "at least 5 are needed" in few["reason"]

    # 2 nearest of well-separated classes: every pair is of one class, the target reached by accepting all.
    easy = stages.calibration_stage(held_out_config("index.num_neighbors=2"), final, split)
    assert easy["threshold"] is None and easy["positive_pair_share"] >= 0.9
    assert "reached by accepting every pair" in easy["reason"] and "precision" not in easy
    blurred = stages.calibration_stage(held_out_config("export.calibration_precision=1.0"), final,
                                       class_split(noise=400.0))
    assert blurred["threshold"] is None and "No threshold reaches precision 1" in blurred["reason"]
    assert 0 < blurred["positive_pair_share"] < 1
    hashed = stages.calibration_stage(held_out_config("model.head=hash", "whitening.enabled=false"), final, split)
    assert hashed["threshold"] is None and "Hamming" in hashed["reason"]


def test_a_forced_calibration_is_refused_before_training():
    from tfsim import config
    from tfsim.errors import UserInputError
    from tfsim.training import stages, task

    split = class_split()  # (the config's own checks: tests/config/test_validate.py)
    forced = config.load("default", ["export.calibration=f1", "train.select_best=true"])  # 2 of 6 classes held out
    fit_split = task.Task(forced).fit_split(split)
    with pytest.raises(UserInputError, match=r"needs at least 3; train.val_fraction=0.25 of the 6 training classes "
                                             r"holds out 2. Hint: train.val_fraction=0.5"):
        stages.check_calibration(forced, fit_split)
    stages.check_calibration(held_out_config("export.calibration=f1"),  # 3 held out: fine
                             task.Task(held_out_config()).fit_split(split))
    stages.check_calibration(config.load("default", ["train.select_best=true"]), fit_split)  # auto: uncalibrated
    stages.check_calibration(config.load("default", ["export.calibration=f1", "train.select_best=true",
                                                     "export.enabled=false"]), fit_split)


@pytest.mark.slow  # (the session's tiny run)
def test_a_default_run_is_exported_uncalibrated_with_the_reason(tiny_run):
    import json

    import tensorflow as tf

    from tfsim import config
    from tfsim.export.saved_model import read_export
    from tfsim.pipelines.train import format_calibration
    from tfsim.training.task import load_split

    result = tiny_run.result
    record = json.loads((tiny_run.run_dir / "metrics.json").read_text())["calibration"]
    assert record == result.metrics["calibration"] == read_export(result.export_dir)["calibration"]
    assert (record["mode"], record["threshold"]) == ("auto", None) and "train.select_best=true" in record["reason"]
    assert format_calibration(record).startswith("match flag: none, the model trained on every training class")
    (exact,) = result.retrieval_dirs
    assert json.loads((exact / "assets.extra" / "tfsim" / "export.json").read_text())["calibration"] is None
    test = load_split(config.load("default", tiny_run.sets)).test
    image = tf.io.encode_png(np.asarray(test.load_images([0])[0], np.uint8)).numpy()
    out = tf.saved_model.load(str(exact)).signatures["serving_default"](image_bytes=tf.constant([image]))
    assert "match" not in out and out["scores"].shape == (1, 10)


@pytest.mark.slow  # (one tiny run: 1 epoch of 2 steps at width 8)
def test_a_run_with_held_out_classes_is_calibrated_and_measured_on_the_test_classes(tmp_path):
    import json

    import tensorflow as tf

    from tfsim import config
    from tfsim.export.embed import embed_export
    from tfsim.export.saved_model import read_export
    from tfsim.pipelines.train import format_calibration
    from tfsim.training import train
    from tfsim.training.task import load_split, validation_split

    sets = ["train.epochs=1", "train.steps_per_epoch=2", "model.width=8", "model.embedding_dim=16",
            "eval.baselines=false", "train.select_best=true", "train.val_fraction=0.5", "export.retrieval=exact",
            f"export.root={tmp_path / 'exports'}"]
    cfg = config.load("default", sets, resolved=False)  # (as the train command: P x K chosen for 3 classes)
    result = train(cfg, tmp_path / "run", verbose=0)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())["calibration"]
    assert record == result.metrics["calibration"] == read_export(result.export_dir)["calibration"]
    assert record["threshold"] is not None and record["precision"] >= 0.9 and record["k"] == 10
    # The classes select_best held out (not trained on, not the test classes), three of them.
    split = load_split(cfg)
    validation = validation_split(split, 0.5, cfg.train.seed).test
    assert record["validation_classes"] == [split.dataset.class_names[c] for c in np.unique(validation.labels)]
    assert sorted(record["validation_classes"]) == sorted(result.metrics["selected"]["validation_classes"])
    assert len(record["validation_classes"]) == 3 and not set(record["validation_classes"]) & set(result.test_classes)
    # whitening.enabled=auto chose on those same 3 classes, held out of training (one fold).
    choice = result.metrics["whitening"]
    assert choice["on"].startswith("the 3 validation classes train.select_best held out of training")
    assert all(len(v) == 1 for v in choice["scores"].values())
    # The threshold reproduces from those classes, embedded by the export.
    again = calibrate(embed_export(result.export_dir, validation, progress=False), validation.labels, 0.9, k=10)
    assert again.threshold == pytest.approx(record["threshold"], abs=1e-4)
    assert again.precision == pytest.approx(record["precision"], abs=2e-3)
    # The flag on the test classes: each test image's 10 nearest others, brute force over the export's embeddings.
    x = embed_export(result.export_dir, split.test, progress=False).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    scores = np.take_along_axis(sims, nearest, 1)
    same = split.test.labels[nearest] == split.test.labels[:, None]
    flagged = scores >= record["threshold"]
    assert record["test_pairs"] == same.size and record["test_positive_pair_share"] == pytest.approx(same.mean())
    assert record["test_precision"] == pytest.approx((flagged & same).sum() / flagged.sum(), abs=5e-3)
    assert record["test_recall"] == pytest.approx((flagged & same).sum() / same.sum(), abs=5e-3)
    assert record["test_accepted_share"] == pytest.approx(flagged.mean(), abs=5e-3)
    assert "on the test classes precision" in format_calibration(record)

    # The retrieval export flags its neighbours by the recorded threshold: what the brute force decides
    # for the same images' neighbours (the gallery holds the query itself: its own row is left out).
    (exact,) = result.retrieval_dirs
    assert json.loads((exact / "assets.extra" / "tfsim" / "export.json").read_text())["calibration"] == record
    queries = np.arange(0, len(split.test), 100)
    images = [tf.io.encode_png(np.asarray(img, np.uint8)).numpy() for img in split.test.load_images(queries)]
    out = tf.saved_model.load(str(exact)).signatures["serving_default"](image_bytes=tf.constant(images))
    match, rows = out["match"].numpy(), out["rows"].numpy()
    np.testing.assert_array_equal(match, out["scores"].numpy() >= np.float32(record["threshold"]))
    for i, q in enumerate(queries):
        others = rows[i] != q
        assert others.sum() == 9 and match[i][others].sum() == flagged[q, :9].sum()


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

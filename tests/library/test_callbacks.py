"""`tfsim.callbacks.RetrievalEvaluation` in a user's own `model.fit`: its keys in `History`, equal to
`retrieval_metrics` of `model.predict`; EarlyStopping and ModelCheckpoint on them; the query /
gallery and dataset forms; the errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfsim.callbacks
import tfsim.data
import tfsim.metrics
from tfsim.losses import TripletSemiHardLoss


def blobs(n_per_class=8, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = (rng.normal(size=(classes, 8)) * 2)[y] + rng.normal(size=(len(y), 8))
    return x.astype(np.float32), y


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4),
                             keras.layers.UnitNormalization()])


@pytest.fixture(scope="module")
def data():
    x_train, y_train = blobs(seed=0)
    x_test, y_test = blobs(n_per_class=5, classes=3, seed=1)
    return x_train, y_train, x_test, y_test


@pytest.mark.slow  # (a model.fit: seconds)
def test_keys_in_history_match_the_metrics_of_predict(data, tmp_path):
    x_train, y_train, x_test, y_test = data
    model = tiny_model()
    model.compile(optimizer="adam", loss=TripletSemiHardLoss(margin=0.5))
    ds = tfsim.data.pk_dataset(x_train, y_train, classes_per_batch=2, examples_per_class=4, seed=0)
    cb = tfsim.callbacks.RetrievalEvaluation(x_test, y_test, ks=(1, 2))
    best = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.weights.h5"), monitor="val_map@r", mode="max",
                                           save_best_only=True, save_weights_only=True)
    history = model.fit(ds, steps_per_epoch=3, epochs=2, callbacks=[cb, best], verbose=0)
    assert {"val_recall@1", "val_recall@2", "val_map@r"} <= set(history.history)
    assert all(len(history.history[k]) == 2 for k in ("val_recall@1", "val_recall@2", "val_map@r"))
    want = tfsim.metrics.retrieval_metrics(model.predict(x_test, verbose=0), y_test, ks=(1, 2))
    for key in ("recall@1", "recall@2", "map@r"):
        assert history.history[f"val_{key}"][-1] == pytest.approx(want[key], abs=1e-9), key
        assert cb.history[-1][key] == history.history[f"val_{key}"][-1]
    assert (tmp_path / "best.weights.h5").is_file()  # ModelCheckpoint saw val_map@r


@pytest.mark.slow  # (a model.fit: seconds)
def test_early_stopping_on_val_recall_at_1(data):
    x_train, y_train, x_test, y_test = data
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss=TripletSemiHardLoss())
    ds = tfsim.data.pk_dataset(x_train, y_train, classes_per_batch=2, examples_per_class=4)
    stop = keras.callbacks.EarlyStopping(monitor="val_recall@1", mode="max", patience=1)
    history = model.fit(ds, steps_per_epoch=1, epochs=6,
                        callbacks=[tfsim.callbacks.RetrievalEvaluation(x_test, y_test, ks=(1,)), stop], verbose=0)
    # A frozen model never improves: epoch 1 sets the best, epoch 2 runs out of patience.
    assert len(history.history["val_recall@1"]) == 2 and stop.stopped_epoch == 1


def test_query_gallery_dataset_and_key_style_forms(data):
    _, _, x, y = data
    model = tiny_model(1)
    emb = model.predict(x, verbose=0)
    query = np.arange(len(y)) % 3 == 0
    want = tfsim.metrics.retrieval_metrics(emb[query], y[query], ks=(1, 2), gallery=(emb[~query], y[~query]))
    assert want != tfsim.metrics.retrieval_metrics(emb, y, ks=(1, 2))  # another protocol, other figures

    forms = {
        "arrays": tfsim.callbacks.RetrievalEvaluation(x[query], y[query], ks=(1, 2), gallery=(x[~query], y[~query]),
                                                      batch_size=4),
        "mask": tfsim.callbacks.RetrievalEvaluation(x, y, ks=(1, 2), query_mask=query),
        # (inputs, labels) batches, reshuffled at every pass: labels stay with their rows
        "pairs": tfsim.callbacks.RetrievalEvaluation(
            tf.data.Dataset.from_tensor_slices((x[query], y[query])).shuffle(20, seed=1).batch(3), ks=(1, 2),
            gallery=(tf.data.Dataset.from_tensor_slices((x[~query], y[~query])).shuffle(20).batch(4), None)),
        "inputs": tfsim.callbacks.RetrievalEvaluation(tf.data.Dataset.from_tensor_slices(x[query]).batch(2), y[query],
                                                      ks=(1, 2), gallery=(x[~query], y[~query]), key_style="_at_",
                                                      prefix="held_out_"),
    }
    for name, cb in forms.items():
        cb.set_model(model)
        logs: dict = {}
        cb.on_epoch_end(0, logs)
        for key in ("recall@1", "recall@2", "map@r"):
            assert cb.history[-1][key] == pytest.approx(want[key], abs=1e-6), (name, key)
        expected = ({"held_out_recall_at_1", "held_out_recall_at_2", "held_out_map_at_r"} if name == "inputs"
                    else {"val_recall@1", "val_recall@2", "val_map@r"})
        assert set(logs) == expected, name


def test_a_model_of_several_inputs(data):
    _, _, x, y = data
    a, b = keras.Input((5,), name="a"), keras.Input((3,), name="b")
    keras.utils.set_random_seed(0)
    out = keras.layers.UnitNormalization()(keras.layers.Dense(4)(keras.layers.Concatenate()([a, b])))
    model = keras.Model({"a": a, "b": b}, out)
    inputs = {"a": x[:, :5], "b": x[:, 5:]}
    cb = tfsim.callbacks.RetrievalEvaluation(inputs, y, ks=(1,), embedder=model, batch_size=4)
    logs: dict = {}
    cb.on_epoch_end(0, logs)
    want = tfsim.metrics.retrieval_metrics(model.predict(inputs, verbose=0), y, ks=(1,))
    assert logs["val_recall@1"] == pytest.approx(want["recall@1"]) and logs["val_map@r"] == pytest.approx(want["map@r"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(y=np.zeros(3)), "one label per row"),
    (dict(query_mask=np.ones(15, bool), gallery=(np.zeros((2, 8)), np.zeros(2))), "not both"),
    (dict(key_style="at"), "key_style"),
    (dict(similarity="euclid"), "distance"),
    (dict(ks=(0,)), "ks"),
    (dict(query_mask=np.ones(4, bool)), "one flag per row"),
    (dict(x=tf.data.Dataset.from_tensor_slices(np.zeros((4, 8))).batch(2), y=None), r"\(inputs, labels\)"),
    (dict(x=tf.data.Dataset.from_tensor_slices((np.zeros((4, 8)), np.zeros(4))).repeat(), y=None), "infinite"),
    (dict(x=np.zeros((15, 8)), y=None), "labels are needed"),
    (dict(ks=(1, 16)), "Recall@16 needs at least 16 gallery items"),
    (dict(ks=(4,), gallery=(np.zeros((3, 8)), np.zeros(3))), "gives 3"),
])
def test_clear_errors(data, kwargs, message):
    _, _, x, y = data
    args = {"x": x, "y": y, **kwargs}
    with pytest.raises(ValueError, match=message):
        tfsim.callbacks.RetrievalEvaluation(args.pop("x"), args.pop("y"), **args)

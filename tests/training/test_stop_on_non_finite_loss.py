"""`StopOnNonFiniteLoss`: a diverging run stops at the step where the loss became NaN, keeping the
last good checkpoint (in a search, that trial is recorded as failed)."""

import keras
import numpy as np
import pytest

from tfsim import runs
from tfsim.training.callbacks import ResumableCheckpoint, StopOnNonFiniteLoss, TrainingDiverged


def test_non_finite_loss_stops_at_that_step_keeping_the_last_checkpoint(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    poisoned = keras.Variable(1.0, trainable=False)  # becomes NaN at step 3 of epoch 2
    model.compile("sgd", loss=lambda y, p: keras.ops.mean((p - y) ** 2) * poisoned)

    class Poison(keras.callbacks.Callback):
        steps = 0

        def on_train_batch_end(self, batch, logs=None):
            Poison.steps += 1
            if Poison.steps == 6:  # 4 steps per epoch: after step 2 of epoch 2
                poisoned.assign(float("nan"))

    x, y = np.ones((16, 2), np.float32), np.ones((16, 1), np.float32)
    ckpt = tmp_path / "checkpoints"
    with pytest.raises(TrainingDiverged, match=r"loss was nan at step 3 of epoch 2\. The last good checkpoint "
                                               r"\(epoch-0001.keras, epoch 1\) is kept"):
        model.fit(x, y, epochs=4, batch_size=4, verbose=0,
                  callbacks=[StopOnNonFiniteLoss(ckpt), ResumableCheckpoint(ckpt), Poison()])
    assert Poison.steps == 6  # stopped at the NaN step, not at the end of the epoch
    assert [e for _, e in runs.epoch_checkpoints(ckpt)] == [1]
    restored = keras.models.load_model(runs.latest_checkpoint(ckpt)[0], compile=False, safe_mode=False)
    assert all(np.isfinite(w).all() for w in restored.get_weights())

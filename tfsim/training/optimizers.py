"""Optimisers and learning-rate schedules of the source projects, with per-layer multipliers.

    build_optimizer(train config, total steps, {layer name: multiplier})
      -> the schedule: "constant", "cosine" (to 0 over the run) or "inverse_sqrt" (Adam with
         warm-up then 1/sqrt(step) decay, as the Image-Retrieve project trains), each after a
         linear warm-up of `train.warmup_steps` (`WarmUp`)
      -> `ScaledAdam` or `ScaledSGD` (Nesterov momentum `train.momentum`, as deep ranking trains:
         lr 0.001, momentum 0.9, weight decay 1e-5), with Keras's decoupled `weight_decay`
         (`train.weight_decay`), and learning-rate multipliers per layer: the proxies of a
         proxy loss (`loss.proxy_lr_multiplier`), the freshly initialised head over a
         pretrained backbone (`train.head_lr_multiplier`)

Keras 3 optimizers have one learning rate; the `Scaled*` classes multiply the (scheduled) rate
of every variable whose path contains a given layer name. With Adam this is exactly a
per-variable learning rate (Adam's step does not depend on the gradient's scale, so scaling
gradients would not do the same); with SGD it scales that variable's step the same way.

Example:
    >>> opt = ScaledAdam(1e-3, lr_multipliers={"proxies": 10.0})
"""

from __future__ import annotations

from typing import Optional

import keras


class _LayerMultipliers:
    """The per-layer learning-rate multipliers shared by `ScaledAdam` and `ScaledSGD`."""

    def _set_multipliers(self, lr_multipliers: Optional[dict]) -> None:
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        for key, value in self.lr_multipliers.items():
            if not value > 0:
                raise ValueError(f"Invalid value for `lr_multipliers[{key!r}]`: expected a number > 0. "
                                 f"Received: lr_multipliers[{key!r}]={value!r}")

    def multiplier(self, keras_variable) -> float:
        """The multiplier of one (Keras) variable: 1.0 unless a path component is a key."""
        parts = str(keras_variable.path).split("/")
        return next((m for name, m in self.lr_multipliers.items() if name in parts), 1.0)

    def update_step(self, gradient, variable, learning_rate):
        # `variable` may be the backend tf.Variable; find its Keras variable for the path.
        index = self._get_variable_index(variable)
        scale = self.multiplier(self._trainable_variables[index])
        if scale != 1.0:
            learning_rate = learning_rate * scale
        return self._update(gradient, variable, learning_rate, index)

    def _update(self, gradient, variable, learning_rate, index):
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["lr_multipliers"] = dict(self.lr_multipliers)
        return config


@keras.saving.register_keras_serializable(package="tfsim")
class ScaledAdam(_LayerMultipliers, keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose learning rate is multiplied for some layers' variables.

    On TensorFlow each variable's update is TensorFlow's fused `ResourceApplyAdam` kernel: the
    same formula as Keras's Adam (m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2), w -= lr
    sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)) in one op per variable instead of about
    fifteen, and the scalars the updates share (beta powers, betas, epsilon) made once per step:
    tracing the training step is about 0.35 s shorter per run (the small ResNet's 29 variables;
    `bench/peer_parity.py`'s note). AMSGrad and other backends keep Keras's update.

    Args:
        learning_rate: float or schedule, as for Adam.
        lr_multipliers: `{layer name: multiplier}`; a variable is scaled if one of the
            components of its path (`"proxy_trainer/proxies/proxies"`) is a key.
        **kwargs: any other Adam argument (e.g. `weight_decay`).
    """

    def __init__(self, learning_rate=1e-3, lr_multipliers: Optional[dict] = None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        self._set_multipliers(lr_multipliers)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # The scalars every variable's update shares are made once per step (`_shared`), not once per
        # variable: about 200 fewer ops for the small ResNet's 29 variables, each built in Python
        # while the training step is traced.
        self._shared_scalars = {}
        try:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._shared_scalars = None

    def _shared(self, dtype, device: str) -> dict:
        """Adam's scalars in `dtype` at this step (beta powers, betas, epsilon), made once per step,
        dtype and device (a replica's variables are updated on its own device) during
        `_backend_update_step`."""
        import tensorflow as tf  # lazy: see `_update`

        cache = getattr(self, "_shared_scalars", None)
        if cache is not None and (dtype, device) in cache:
            return cache[dtype, device]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        scalars = {"beta1_power": tf.pow(beta_1, step), "beta2_power": tf.pow(beta_2, step), "beta1": beta_1,
                   "beta2": beta_2, "epsilon": tf.cast(self.epsilon, dtype)}
        if cache is not None:
            cache[dtype, device] = scalars
        return scalars

    def _update(self, gradient, variable, learning_rate, index):
        if self.amsgrad or keras.backend.backend() != "tensorflow":
            return keras.optimizers.Adam.update_step(self, gradient, variable, learning_rate)
        import tensorflow as tf  # lazy: the optimisers module is imported for its classes on any backend

        # (`handle`: the variable's resource; under a distribution strategy's update, the local copy's)
        tf.raw_ops.ResourceApplyAdam(var=variable.handle, m=self._momentums[index].handle,
                                     v=self._velocities[index].handle, lr=tf.cast(learning_rate, variable.dtype),
                                     grad=tf.cast(gradient, variable.dtype),
                                     **self._shared(variable.dtype, variable.device))


@keras.saving.register_keras_serializable(package="tfsim")
class ScaledSGD(_LayerMultipliers, keras.optimizers.SGD):
    """`keras.optimizers.SGD` (Nesterov momentum by default) with per-layer multipliers (see
    `ScaledAdam`)."""

    def __init__(self, learning_rate=1e-3, lr_multipliers: Optional[dict] = None, momentum: float = 0.9,
                 nesterov: bool = True, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        self._set_multipliers(lr_multipliers)


@keras.saving.register_keras_serializable(package="tfsim")
class InverseSqrtDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`lr * min((step + 1) / w, sqrt(w / (step + 1)))`: a linear warm-up over `w` steps to `lr`,
    then decay as 1/sqrt(step) (the Transformer's schedule; Image-Retrieve trains Adam this way)."""

    def __init__(self, learning_rate: float, warmup_steps: int):
        self.learning_rate, self.warmup_steps = float(learning_rate), int(max(warmup_steps, 1))

    def __call__(self, step):
        step = keras.ops.cast(step, "float32") + 1.0
        w = float(self.warmup_steps)
        return self.learning_rate * keras.ops.minimum(step / w, keras.ops.sqrt(w / step))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="tfsim")
class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up from `lr / warmup_steps` to `lr` over `warmup_steps` steps, then `after`
    (a schedule started at 0, or the constant `lr`)."""

    def __init__(self, learning_rate: float, warmup_steps: int, after=None):
        self.learning_rate, self.warmup_steps = float(learning_rate), int(warmup_steps)
        self.after = keras.optimizers.schedules.deserialize(after) if isinstance(after, dict) else after

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.learning_rate * (step + 1.0) / float(max(self.warmup_steps, 1))
        later = self.learning_rate if self.after is None else self.after(
            keras.ops.maximum(step - float(self.warmup_steps), 0.0))
        return keras.ops.where(step < float(self.warmup_steps), warm, later)

    def get_config(self):
        after = None if self.after is None else keras.optimizers.schedules.serialize(self.after)
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps, "after": after}


def learning_rate(train, total_steps: int):
    """The learning rate or schedule of a `TrainConfig` over `total_steps` steps."""
    lr, warm = train.learning_rate, train.warmup_steps
    if train.lr_schedule == "inverse_sqrt":
        return InverseSqrtDecay(lr, warm)
    after = None
    if train.lr_schedule == "cosine":
        after = keras.optimizers.schedules.CosineDecay(lr, max(total_steps - warm, 1))
    if warm == 0:
        return lr if after is None else after
    return WarmUp(lr, warm, after)


def build_optimizer(train, total_steps: int, lr_multipliers: Optional[dict] = None) -> keras.optimizers.Optimizer:
    """The optimiser of a `TrainConfig` (see module doc)."""
    lr = learning_rate(train, total_steps)
    options = {"weight_decay": train.weight_decay} if train.weight_decay > 0 else {}
    if train.optimizer == "sgd":
        return ScaledSGD(lr, lr_multipliers=lr_multipliers, momentum=train.momentum, **options)
    return ScaledAdam(lr, lr_multipliers=lr_multipliers, **options)


__all__ = ["InverseSqrtDecay", "ScaledAdam", "ScaledSGD", "WarmUp", "build_optimizer", "learning_rate"]

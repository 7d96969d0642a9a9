"""Adam with per-layer learning-rate multipliers (e.g. a faster rate for class proxies).

Keras 3 optimizers have one learning rate. Proxy losses are usually trained with a
larger rate for the proxies than for the backbone, so `ScaledAdam` multiplies the
(scheduled) learning rate of every variable whose path contains a given layer name.
With Adam this is exactly a per-variable learning rate: Adam's step does not depend
on the gradient's scale, so scaling gradients would not do the same thing.

Example:
    >>> opt = ScaledAdam(1e-3, lr_multipliers={"proxies": 10.0})
"""

from __future__ import annotations

from typing import Optional

import keras


@keras.saving.register_keras_serializable(package="tfsim")
class ScaledAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose learning rate is multiplied for some layers' variables.

    Args:
        learning_rate: float or schedule, as for Adam.
        lr_multipliers: `{layer name: multiplier}`; a variable is scaled if one of the
            components of its path (`"proxy_trainer/proxies/proxies"`) is a key.
        **kwargs: any other Adam argument.
    """

    def __init__(self, learning_rate=1e-3, lr_multipliers: Optional[dict] = None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
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
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["lr_multipliers"] = dict(self.lr_multipliers)
        return config

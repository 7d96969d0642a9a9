"""Data: sources (folders, list files, TFDS, the shipped default), data specs, splits, decoding,
tf.data pipelines and the P x K samplers; `pk_dataset` for your own Keras code.

    ds = tfsim.data.pk_dataset(x_train, y_train, classes_per_batch=4, examples_per_class=8, seed=0)

The public name is loaded on first use (PEP 562): the TensorFlow-free modules here
(`formats`, `sources`, `lists`, `specs`, `splits`) are imported by the config and the commands'
fast paths, which must not pay for TensorFlow by importing this package.
"""

__all__ = ["pk_dataset"]


def __getattr__(name: str):
    if name == "pk_dataset":
        from tfsim.data.pk import pk_dataset  # lazy: TensorFlow, only when the sampler is used

        globals()["pk_dataset"] = pk_dataset  # (looked up once)
        return pk_dataset
    raise AttributeError(f"module 'tfsim.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))

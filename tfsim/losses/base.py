"""The Keras base class of tfsim's batch metric losses, and how they behave under tf.distribute.

Every batch loss is written as per-anchor terms and one normaliser:
`loss = sum_a c_a / Z` (`terms(labels, embeddings, **args) -> (c [B], Z)`), e.g. for the
semi-hard triplet loss c_a sums the hinges of anchor a's positive pairs and Z counts
all positive pairs. That form makes the distributed cases exact:

* One device: `sum(c) / Z`.
* MirroredStrategy, `cross_replica=False` (default): each replica mines within its own
  slice of the global batch and returns `(sum(c) / Z) / num_replicas`. Keras 3 *sums*
  scalar losses across replicas (a scalar `call` output is doubled with 2 replicas;
  tests/losses/test_distributed.py checks it), so the total is the mean
  of the per-replica losses, not their sum.
* MirroredStrategy, `cross_replica=True`: each replica all-gathers labels and embeddings,
  computes c and Z on the global batch, and returns the sum of c over *its own* anchors
  divided by the global Z. The replicas' sum is exactly the single-device loss of the
  global batch, and since all_gather passes gradients back to the replica that owns an
  embedding, so are the gradients. Cost: every replica computes the [B, B] distances of
  the global batch (cheap next to the backbone) and mining sees every negative, which
  matters when the per-replica batch holds few classes.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsim.losses import _masks


def _replica_context():
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def gather_batch(ctx, labels, embeddings):
    """The global batch `(labels, embeddings)`, the replicas' slices in replica order (gradients
    flow back to the replica that owns each row); the batch itself outside a replica context."""
    if ctx is None:
        return labels, embeddings
    return ctx.all_gather(labels, axis=0), ctx.all_gather(embeddings, axis=0)


def own_rows(ctx, c, local_batch):
    """This replica's rows of per-anchor terms `c` of the global batch (all of them outside a
    replica context); `local_batch`: the replica's own batch, whose length is its share."""
    if ctx is None:
        return c
    local = tf.shape(local_batch)[0]
    rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    return c[rid * local:(rid + 1) * local]


class MetricLoss(keras.losses.Loss):
    """Base of tfsim's batch metric losses: `y_true` = labels `[B]`, `y_pred` = embeddings `[B, D]`.

    Subclasses set `terms` (see module doc) and list their constructor arguments in
    `_args`; `get_config`/`from_config` round-trip them (a callable distance is
    serialised as a registered Keras object).

    Args:
        cross_replica: under a multi-replica strategy, mine against the global batch.
    """

    input_kind = "embeddings"  # y_pred: embeddings of a labelled batch
    terms = None
    _args: tuple[str, ...] = ()

    def __init__(self, name: str, cross_replica: bool = False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.cross_replica = bool(cross_replica)

    def call(self, y_true, y_pred):
        args = {k: getattr(self, k) for k in self._args}
        terms = type(self).terms
        dtype = tf.convert_to_tensor(y_pred).dtype
        ctx = _replica_context()
        if ctx is None:
            return _masks.reduce_terms(terms(y_true, y_pred, **args), dtype)
        n = ctx.num_replicas_in_sync
        if not self.cross_replica:
            return _masks.reduce_terms(terms(y_true, y_pred, **args), dtype, scale=1.0 / n)
        labels, embeddings = gather_batch(ctx, tf.reshape(y_true, [-1]), y_pred)
        c, z = terms(labels, embeddings, **args)
        return _masks.finish(tf.math.divide_no_nan(tf.reduce_sum(own_rows(ctx, c, y_pred)), z), dtype)

    def get_config(self):
        config = super().get_config()
        config["cross_replica"] = self.cross_replica
        for key in self._args:
            value = getattr(self, key)
            config[key] = keras.saving.serialize_keras_object(value) if callable(value) else value
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("distance_metric"), dict):
            config["distance_metric"] = keras.saving.deserialize_keras_object(config["distance_metric"])
        return cls(**config)

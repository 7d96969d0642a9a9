"""Cross-batch memory (XBM): mining against the embeddings of the last M training images.

Wang, Zhang, Huang & Scott, "Cross-Batch Memory for Embedding Learning", CVPR 2020,
arXiv:1912.06798: embeddings drift slowly once training has warmed up, so the embeddings of
recent batches stand in for more of the dataset. A mining loss of anchors from the current
batch sees the batch and the memory as one set of references:

    loss = sum_{a in batch} c_a(batch + memory) / sum_{a in batch} z_a(batch + memory)

with the loss's own per-anchor terms (`MetricLoss.terms(..., num_anchors=B)`), no gradient
through the memory, and the memory empty = the plain loss of the batch. After the step the
batch's embeddings and labels enter the memory, first in first out (a ring of M slots).

Under MirroredStrategy / MultiWorkerMirroredStrategy every replica all-gathers the global batch,
computes the terms of all of its anchors against the global batch plus the memory, keeps the
sum over its own anchors divided by the global normaliser (as `cross_replica=True` does), and
writes the global batch into the memory: every replica holds the same memory, the replicas'
losses sum to the one-device loss of the global batch, and so do the gradients. (PML's
`CrossBatchMemory` keeps a separate memory per rank under DDP, fed with that rank's batch.)

The memory is state: `CrossBatchMemory` (a layer of non-trainable variables: embeddings,
labels, the next slot, the filled count and the steps taken) sits in `MemoryTrainer`, the model
training fits, so checkpoints hold it and a resumed run continues with the same memory.
`warmup_steps`: the first steps train on the batch alone (the memory fills meanwhile).

    trainer = MemoryTrainer(embedder, memory_size=1024)
    trainer.compile(optimizer="adam", loss=TripletSemiHardLoss(margin=0.5))
    trainer.fit(pk_batches, steps_per_epoch=100)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfsim.losses.base import MetricLoss, _replica_context, gather_batch, own_rows

MEMORY_TRAINER = "memory_trainer"
MEMORY_LAYER = "cross_batch_memory"


def _check_count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"Invalid value for `{name}`: expected an integer >= {low}. Received: {name}={value!r}")
    return value


@keras.saving.register_keras_serializable(package="tfsim")
class CrossBatchMemory(keras.layers.Layer):
    """A FIFO ring of the last `memory_size` embeddings `[M, D]` and labels (see module doc).

    Its variables are aggregated "only_first_replica": the replicas write the same global batch,
    and a mirrored variable takes the first replica's value."""

    def __init__(self, memory_size: int, embedding_dim: int, name: str = MEMORY_LAYER, **kwargs):
        super().__init__(name=name, trainable=False, **kwargs)
        self.memory_size = _check_count("memory_size", memory_size, 1)
        self.embedding_dim = _check_count("embedding_dim", embedding_dim, 1)
        kw = dict(trainable=False, aggregation="only_first_replica")
        self.embeddings = self.add_weight(shape=(self.memory_size, self.embedding_dim), initializer="zeros",
                                          dtype="float32", name="embeddings", **kw)
        self.labels = self.add_weight(shape=(self.memory_size,), initializer="zeros", dtype="int32", name="labels",
                                      **kw)
        self.next_slot = self.add_weight(shape=(), initializer="zeros", dtype="int32", name="next_slot", **kw)
        self.filled = self.add_weight(shape=(), initializer="zeros", dtype="int32", name="filled", **kw)
        self.steps = self.add_weight(shape=(), initializer="zeros", dtype="int32", name="steps", **kw)

    def read(self) -> tuple[tf.Tensor, tf.Tensor]:
        """`(labels [F], embeddings [F, D])` of the F filled slots, in slot order."""
        filled = tf.convert_to_tensor(self.filled)
        return tf.convert_to_tensor(self.labels)[:filled], tf.convert_to_tensor(self.embeddings)[:filled]

    def write(self, labels: tf.Tensor, embeddings: tf.Tensor) -> None:
        """Puts a batch in the next slots (wrapping around; of a batch larger than the memory,
        its last `memory_size` rows), and counts a step."""
        m = self.memory_size
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)[-m:]
        embeddings = tf.cast(embeddings, tf.float32)[-m:]
        n = tf.shape(labels)[0]
        slots = tf.math.floormod(tf.convert_to_tensor(self.next_slot) + tf.range(n), m)[:, None]
        self.embeddings.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(self.embeddings), slots,
                                                           embeddings))
        self.labels.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(self.labels), slots, labels))
        self.next_slot.assign(tf.math.floormod(tf.convert_to_tensor(self.next_slot) + n, m))
        self.filled.assign(tf.minimum(tf.convert_to_tensor(self.filled) + n, m))
        self.steps.assign_add(1)

    def get_config(self):
        config = super().get_config()
        config.update(memory_size=self.memory_size, embedding_dim=self.embedding_dim)
        return config


def memory_loss(loss: MetricLoss, y_true, y_pred, memory_labels, memory_embeddings):
    """This replica's share of `loss` over the global batch with the memory as extra references,
    and the global batch `(labels, embeddings)` to write into the memory (see module doc)."""
    if not isinstance(loss, MetricLoss) or loss.input_kind != "embeddings":
        raise ValueError(f"Invalid loss for a cross-batch memory: expected one of tfsim's mining losses of a labelled "
                         f"batch of embeddings (a MetricLoss with input_kind 'embeddings'). Received: {loss!r}")
    args = {k: getattr(loss, k) for k in loss._args}
    ctx = _replica_context()
    labels, embeddings = gather_batch(ctx, tf.cast(tf.reshape(y_true, [-1]), tf.int32), tf.cast(y_pred, tf.float32))
    c, z = type(loss).terms(tf.concat([labels, memory_labels], 0),
                            tf.concat([embeddings, tf.stop_gradient(memory_embeddings)], 0),
                            num_anchors=tf.shape(labels)[0], **args)
    # float32 whatever the embedder's dtype, as Keras's Loss.__call__ gives (a float16 loss would
    # overflow once a mixed-precision optimiser scales it).
    return (tf.math.divide_no_nan(tf.reduce_sum(own_rows(ctx, c, y_pred)), z),
            (labels, tf.stop_gradient(embeddings)))


@keras.saving.register_keras_serializable(package="tfsim")
class MemoryTrainer(keras.Model):
    """`embedder` trained with a cross-batch memory of `memory_size` embeddings (see module doc).

    Compile it with one of tfsim's mining losses (`MetricLoss` of embeddings); `fit` on labelled
    batches. `trainer(images)` is `embedder(images)`; `trainer.embedder` is the trained model.

    Args:
        embedder: the embedding model `images -> [B, D]`.
        memory_size: M, the embeddings remembered (>= 1).
        warmup_steps: steps trained on the batch alone before the memory is read (it is written
            from the first step).
    """

    def __init__(self, embedder: keras.Model, memory_size: int, warmup_steps: int = 0, name: str = MEMORY_TRAINER,
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.embedder = embedder
        self.warmup_steps = _check_count("warmup_steps", warmup_steps, 0)
        self.memory = CrossBatchMemory(memory_size, int(embedder.output_shape[-1]))

    def build(self, input_shape=None):  # the embedder and the memory are built already
        self.built = True

    def call(self, inputs, training=None):
        return self.embedder(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not training:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        memory_labels, memory_embeddings = self.memory.read()
        use = tf.convert_to_tensor(self.memory.steps) >= self.warmup_steps
        # Before the warm-up ends the memory is there but empty to the loss.
        keep = tf.where(use, tf.shape(memory_labels)[0], 0)
        loss, (labels, embeddings) = memory_loss(self.loss, y, y_pred, memory_labels[:keep],
                                                 memory_embeddings[:keep])
        self.memory.write(labels, embeddings)
        for extra in self.losses:  # regularisers of the embedder, as Keras adds them
            loss = loss + tf.cast(self._aggregate_additional_loss(extra), loss.dtype)
        return loss

    def get_config(self):
        return {"name": self.name, "embedder": keras.saving.serialize_keras_object(self.embedder),
                "memory_size": self.memory.memory_size, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        return cls(**config)

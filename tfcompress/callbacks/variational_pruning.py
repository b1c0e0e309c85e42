"""Algorithm 1 of Variational CNN Pruning (Zhao et al., CVPR 2019) as a Keras callback.

After every epoch, each ``VariationalBatchNormalization`` channel whose saliency posterior
``N(mu_i, sigma_i^2)`` has ``|mu_i| < tau`` and ``sigma_i < theta`` is pruned (Algorithm 1,
lines 7-11 of the seed slides): its ``mask`` entry is set to 0, so it outputs 0 from then on.
Pruning is permanent. The counts are written to ``logs`` and, with ``log_dir`` or
``writer``, to TensorBoard.

Resuming: the callback keeps no state of its own (the masks are layer variables, saved in
``.keras`` files and by ``BackupAndRestore``). Listed after ``BackupAndRestore``, the checkpoint
written at the end of an epoch holds the weights of that epoch but not yet its pruning; so when
a ``fit`` starts past epoch 0 (resumed by ``BackupAndRestore``, or ``initial_epoch``), the
callback applies the rule once more before the first batch. Pruning depends only on the
posterior (``mu``, ``sigma``) and is permanent, so this repeats exactly what the end of the
previous epoch did (nothing when the checkpoint already holds it): the resumed run's masks are
an uninterrupted run's, whatever the order of the callbacks.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from tfcompress.errors import TfcompressError
from tfcompress.layers.variational_bn import VariationalBatchNormalization


def _write_scalar(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar written with ``tf.summary.write``.

    ``tf.summary.scalar`` needs the tensorboard package; the low-level writer with the
    scalars plugin's metadata produces the same event without it.
    """
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step, metadata=metadata)


@keras.saving.register_keras_serializable(package="tfcompress")
class VariationalPruning(keras.callbacks.Callback):
    """Prune VCP channels with ``|mu| < tau`` and ``sigma < theta`` after each epoch.

    Logs, at the end of every epoch:

    - ``logs["vcp_pruned_channels"]``: channels masked so far, all layers together;
    - ``logs["vcp_pruned/<layer name>"]``: channels masked so far in that layer;
    - the same as TensorBoard scalars (step = epoch) when ``log_dir`` or ``writer`` is given.

    Args:
        tau: threshold on ``|mu|``.
        theta: threshold on ``sigma``.
        log_dir: directory for a TensorBoard summary writer (created on train begin).
        writer: a ``tf.summary`` writer to use instead (not serialized).
        verbose: 1 prints the counts after each epoch.

    Example:

    >>> import keras, numpy as np
    >>> from tfcompress.callbacks import VariationalPruning
    >>> from tfcompress.layers.variational_bn import VariationalBatchNormalization
    >>> x = keras.Input((4,))
    >>> h = VariationalBatchNormalization(dataset_size=16, name="vbn")(keras.layers.Dense(6)(x))
    >>> model = keras.Model(x, keras.layers.Dense(2)(h))
    >>> model.compile("sgd", "mse")
    >>> _ = model.fit(np.ones((16, 4)), np.ones((16, 2)), verbose=0, callbacks=[VariationalPruning(tau=2.0, theta=1.0)])
    >>> int(model.get_layer("vbn").mask.numpy().sum())  # every |mu| < 2: all channels cut
    0
    """

    def __init__(
        self,
        tau: float,
        theta: float,
        log_dir: str | None = None,
        writer: Any = None,
        verbose: int = 0,
    ):
        super().__init__()
        for name, value in (("tau", tau), ("theta", theta)):
            if not math.isfinite(float(value)) or float(value) <= 0:
                raise TfcompressError(
                    f"{name} must be a positive finite number, got {value!r}",
                    "VariationalPruning",
                    f"pass {name} > 0",
                )
        self.tau = float(tau)
        self.theta = float(theta)
        self.log_dir = None if log_dir is None else str(log_dir)
        self.writer = writer
        self.verbose = int(verbose)
        self._layers: list = []
        self._first_epoch = False

    def on_train_begin(self, logs=None):
        self._layers = [
            layer
            for layer in self.model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, VariationalBatchNormalization)
        ]
        if not self._layers:
            raise TfcompressError(
                "the model has no VariationalBatchNormalization layer",
                "VariationalPruning",
                "convert the model's BatchNormalization layers first "
                "(VariationalBatchNormalization.from_batch_normalization)",
            )
        if self.writer is None and self.log_dir is not None:
            self.writer = tf.summary.create_file_writer(self.log_dir)
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        # after every callback's on_train_begin: BackupAndRestore has restored the checkpoint
        if self._first_epoch and epoch > 0:
            for layer in self._layers:
                layer.prune(self.tau, self.theta)  # the end of epoch `epoch - 1`, if not in it
        self._first_epoch = False

    def on_epoch_end(self, epoch, logs=None):
        counts = {}
        for layer in self._layers:
            layer.prune(self.tau, self.theta)
            counts[layer.name] = int((~layer.keep_mask()).sum())
        total = sum(counts.values())
        if logs is not None:
            logs["vcp_pruned_channels"] = total
            for name, count in counts.items():
                logs[f"vcp_pruned/{name}"] = count
        if self.writer is not None:
            with self.writer.as_default(step=epoch):
                _write_scalar("vcp_pruned_channels", total, epoch)
                for name, count in counts.items():
                    _write_scalar(f"vcp_pruned/{name}", count, epoch)
            self.writer.flush()
        if self.verbose:
            print(f"VariationalPruning epoch {epoch + 1}: {total} channels pruned {counts}")

    def get_config(self) -> dict[str, Any]:
        return {"tau": self.tau, "theta": self.theta, "log_dir": self.log_dir, "verbose": self.verbose}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VariationalPruning:
        return cls(**config)

"""Algorithm 1 of Variational CNN Pruning (Zhao et al., CVPR 2019) as a Keras callback.

After every epoch, each ``VariationalBatchNormalization`` channel whose saliency posterior
``N(mu_i, sigma_i^2)`` has ``|mu_i| < tau`` and ``sigma_i < theta`` is pruned (Algorithm 1,
lines 7-11 of the seed slides): its ``mask`` entry is set to 0, so it outputs 0 from then on.
Pruning is permanent. The counts are written to ``logs`` and, with ``log_dir`` or
``writer``, to TensorBoard.

Resuming: the callback keeps no state of its own (the masks are layer variables, saved in
``.keras`` files and by ``BackupAndRestore``). List it before ``BackupAndRestore`` /
``ModelCheckpoint`` in ``callbacks`` so that the checkpoint written at the end of an epoch
already holds that epoch's pruning.
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

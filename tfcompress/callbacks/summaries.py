"""`CompressionSummaries`: per-layer compression state in TensorBoard, as tfmot's ``PruningSummaries``.

At the end of every epoch (and every ``update_freq`` batches when it is an integer) it writes,
for every tfcompress layer of the model it trains:

* pruning wrappers: ``<layer>/sparsity`` (zero mask entries), ``<layer>/kept_channels``,
  ``<layer>/removable_channels`` (what ``shrink`` will remove, channel granularity), and the
  ``pruning_step``;
* Bayesian layers (anything with a ``kl_weight`` variable and ``kl_divergence()``):
  ``<layer>/kl`` (the KL term), ``<layer>/kl_weight``, ``<layer>/kept_channels`` and a histogram
  ``<layer>/importance`` of ``channel_importance()``;
* QAT quantizers: ``<layer>/range_min``, ``<layer>/range_max`` of the int8 range they learned.

Example:

>>> import keras, numpy as np, tempfile, tfcompress
>>> from tfcompress.callbacks import CompressionSummaries, UpdatePruning
>>> x = keras.Input((4,))
>>> model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(8, name="fc")(x)))
>>> pruned = tfcompress.prune(model, tfcompress.pruning.ConstantSparsity(0.5, 0))
>>> pruned.compile("sgd", "mse")
>>> log_dir = tempfile.mkdtemp()
>>> _ = pruned.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0,
...                callbacks=[UpdatePruning(), CompressionSummaries(log_dir)])
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

from tfcompress.core import iter_layers
from tfcompress.errors import TfcompressError
from tfcompress.layers.fake_quant import ActivationQuantizer
from tfcompress.layers.prune_low_magnitude import PruneLowMagnitude
from tfcompress.pruning.groups import removable_channels


@keras.saving.register_keras_serializable(package="tfcompress")
class CompressionSummaries(keras.callbacks.Callback):
    """Write the compression state of every tfcompress layer to TensorBoard event files.

    It writes the model as it is when its hook runs: list it after the callbacks that change the
    model in the same hooks (`UpdatePruning`, `PosteriorPruning` at batch begin / end,
    `VariationalPruning` at epoch end) so that a step's values include their updates of that step.

    Steps are the optimizer's ``iterations``: after a kill and a resume with ``BackupAndRestore``
    the new event file continues at the steps the uninterrupted run writes (an epoch that was
    cut short is written again from its start, with the same values).

    Args:
        log_dir: directory of the event files (created if missing).
        update_freq: ``"epoch"`` (default) or a number of optimizer steps between writes.

    Example:
        >>> import tensorflow as tf
        >>> from tfcompress.callbacks import UpdatePruning
        >>> from tfcompress.pruning import ConstantSparsity, prune
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
        >>> pruned = prune(model, ConstantSparsity(0.5, begin_step=0, frequency=1), verbose=0)
        >>> pruned.compile("adam", "mse")
        >>> _ = pruned.fit(np.ones((8, 8)), np.zeros((8, 4)), epochs=1, verbose=0,
        ...                callbacks=[UpdatePruning(), CompressionSummaries("logs")])
        >>> import glob
        >>> [path] = glob.glob("logs/compression/events.out.tfevents.*")
        >>> scalars = {v.tag: float(tf.make_ndarray(v.tensor)) for e in tf.compat.v1.train.summary_iterator(path)
        ...            for v in e.summary.value if v.metadata.plugin_data.plugin_name != "histograms"}
        >>> {tag: value for tag, value in scalars.items() if "sparsity" in tag}
        {...: 0.5...}
    """

    def __init__(self, log_dir: str | os.PathLike, update_freq: str | int = "epoch"):
        super().__init__()
        if update_freq != "epoch" and (isinstance(update_freq, bool) or not isinstance(update_freq, int)
                                       or update_freq < 1):
            raise TfcompressError(f"update_freq must be 'epoch' or a positive integer, got {update_freq!r}",
                                  "CompressionSummaries", "pass update_freq='epoch' or e.g. 100")
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._writer = None
        self._batches = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        import tensorflow as tf

        os.makedirs(self.log_dir, exist_ok=True)
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "compression"))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batches += 1
        if self.update_freq != "epoch":
            # every update_freq optimizer steps: the step restored by BackupAndRestore, so a
            # resumed run writes at the steps an uninterrupted one does
            step = self._step()
            if step % self.update_freq == 0:
                self.write(step)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.write(self._step())

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and getattr(optimizer, "iterations", None) is not None:
            return int(keras.ops.convert_to_numpy(optimizer.iterations))
        return self._batches

    def scalars(self) -> dict[str, float]:
        """The scalars written now, by tag (also handy without TensorBoard)."""
        return self._collect()[0]

    def _collect(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        scalars: dict[str, float] = {}
        histograms: dict[str, np.ndarray] = {}
        removable = removable_channels(self.model)
        for layer in iter_layers(self.model, models=False):
            if isinstance(layer, PruneLowMagnitude):
                name = layer.layer.name
                mask = keras.ops.convert_to_numpy(layer.mask)
                channels = layer.channel_mask_numpy()
                scalars[f"{name}/sparsity"] = float(1.0 - mask.mean())
                scalars[f"{name}/kept_channels"] = float(channels.sum())
                scalars[f"{name}/pruning_step"] = float(keras.ops.convert_to_numpy(layer.pruning_step))
                if name in removable:
                    scalars[f"{name}/removable_channels"] = float(removable[name])
            elif isinstance(getattr(layer, "kl_weight", None), keras.Variable) and hasattr(layer, "kl_divergence"):
                scalars[f"{layer.name}/kl"] = float(keras.ops.convert_to_numpy(layer.kl_divergence()))
                scalars[f"{layer.name}/kl_weight"] = float(keras.ops.convert_to_numpy(layer.kl_weight))
                if hasattr(layer, "keep_mask"):
                    scalars[f"{layer.name}/kept_channels"] = float(np.asarray(layer.keep_mask()).sum())
                if hasattr(layer, "channel_importance"):
                    histograms[f"{layer.name}/importance"] = np.asarray(layer.channel_importance(), np.float64)
            elif isinstance(layer, ActivationQuantizer) and layer.built:
                scalars[f"{layer.name}/range_min"] = float(np.min(keras.ops.convert_to_numpy(layer.range_min)))
                scalars[f"{layer.name}/range_max"] = float(np.max(keras.ops.convert_to_numpy(layer.range_max)))
            output_quantizer = getattr(layer, "output_quantizer", None)
            if isinstance(output_quantizer, ActivationQuantizer) and output_quantizer.built:
                scalars[f"{layer.name}/range_min"] = float(keras.ops.convert_to_numpy(output_quantizer.range_min))
                scalars[f"{layer.name}/range_max"] = float(keras.ops.convert_to_numpy(output_quantizer.range_max))
        return scalars, histograms

    def write(self, step: int) -> None:
        """Write the current state at ``step`` (called by the hooks above)."""
        import tensorflow as tf

        if self._writer is None:
            return
        scalars, histograms = self._collect()
        # tf.summary.write with TensorBoard's plugin metadata: the files TensorBoard's scalar and
        # histogram dashboards read, without needing TensorBoard installed to write them
        with self._writer.as_default(step=step):
            for tag, value in scalars.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_metadata("scalars"))
            for tag, values in histograms.items():
                tf.summary.write(tag, tf.constant(_buckets(values)), metadata=_metadata("histograms"))
        self._writer.flush()

    def get_config(self) -> dict[str, Any]:
        return {"log_dir": self.log_dir, "update_freq": self.update_freq}


def _metadata(plugin: str):
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))


def _buckets(values: np.ndarray, count: int = 30) -> np.ndarray:
    """TensorBoard's histogram tensor: rows ``(left edge, right edge, count)``."""
    values = np.asarray(values, np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros((0, 3))
    low, high = float(values.min()), float(values.max())
    if low == high:
        return np.array([[low - 0.5, high + 0.5, float(values.size)]])
    counts, edges = np.histogram(values, bins=count, range=(low, high))
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)

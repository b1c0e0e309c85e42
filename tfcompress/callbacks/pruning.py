"""`UpdatePruning`: advance the pruning step each batch and update masks when the schedule says so.

tfmot's ``UpdatePruningStep`` under the name the tfcompress flow uses (the old name is an
alias). The step is stored in every wrapper's ``pruning_step`` variable, so a model saved to
``.keras`` or restored by ``BackupAndRestore`` resumes its schedule where it stopped.
Masks are computed eagerly, between batches, at the schedule's frequency only: the compiled
training step never changes and the per-batch cost is one small assignment per wrapped layer.
"""

from __future__ import annotations

from typing import Any

import keras

from tfcompress.core.walk import iter_layers
from tfcompress.errors import TfcompressError
from tfcompress.pruning import mask_sparsity, pruning_wrappers, update_masks
from tfcompress.pruning.groups import removable_channels


@keras.saving.register_keras_serializable(package="tfcompress")
class UpdatePruning(keras.callbacks.Callback):
    """Keep the pruning step and the masks of a `tfcompress.prune` model up to date during `fit`.

    Adds ``sparsity`` (fraction of zero kernel weights over all pruned layers) to the epoch logs,
    and for channel pruning ``removable_channels``: the fraction of the channel-pruned layers'
    output channels that ``tfcompress.shrink`` will really remove (coupled channels go together,
    ``tfcompress.pruning.groups``).

    Example:
        >>> import numpy as np
        >>> from tfcompress.pruning import PolynomialDecay, prune
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> pruned = prune(model, PolynomialDecay(0.0, 0.75, begin_step=0, end_step=8, frequency=1), verbose=0)
        >>> pruned.compile("adam", "mse")
        >>> x, y = np.ones((32, 8), "float32"), np.zeros((32, 4), "float32")
        >>> history = pruned.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[UpdatePruning()])
        >>> [round(s, 2) for s in history.history["sparsity"]]      # 4 steps per epoch: on the ramp, at 0.75
        [0.56, 0.75]
    """

    def __init__(self) -> None:
        super().__init__()
        self.step: int | None = None
        self._wrappers: list = []
        self._pruned = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._wrappers = pruning_wrappers(self.model)
        if not self._wrappers:
            raise TfcompressError(
                "UpdatePruning found no pruned layer in the model", self.model.name,
                "wrap the model with tfcompress.prune(model, schedule=...) before fit",
            )
        self._pruned = _graph_model_holding(self.model, self._wrappers)
        # read at the first batch, not here: a BackupAndRestore listed after this callback
        # restores the wrappers' pruning_step only in its own on_train_begin
        self.step = None

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self.step is None:
            self.step = int(keras.ops.convert_to_numpy(self._wrappers[0].pruning_step))
        update_masks(self._pruned, self.step)
        self.step += 1
        for wrapper in self._wrappers:
            wrapper.pruning_step.assign(self.step)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None and self._wrappers:
            logs["sparsity"] = mask_sparsity(self._wrappers)
            removable = removable_channels(self._pruned)
            if removable:
                total = sum(int(w.channel_mask_numpy().size) for w in self._wrappers if w.layer.name in removable)
                logs["removable_channels"] = sum(removable.values()) / max(total, 1)

    def get_config(self) -> dict[str, Any]:
        return {}


def _graph_model_holding(model, wrappers: list) -> keras.Model:
    """The model whose graph the masks are computed on: ``model`` itself when it is Functional or
    Sequential, else the one graph model inside it that holds every pruned layer (the student of
    a `tfcompress.distillation.Distiller`, whose teacher is frozen and unpruned)."""
    if _has_graph(model):
        return model
    wanted = {id(w) for w in wrappers}
    for sub in iter_layers(model):
        if isinstance(sub, keras.Model) and _has_graph(sub) and wanted <= {id(w) for w in pruning_wrappers(sub)}:
            return sub
    raise TfcompressError(
        f"the pruned layers of {type(model).__name__} are not all inside one Functional or Sequential model",
        model.name, "fit a Functional / Sequential model, or a wrapper (e.g. a Distiller) around one pruned model",
    )


def _has_graph(model) -> bool:
    return isinstance(model, keras.Sequential) or (isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth"))


#: tfmot's name, for a find-and-replace migration.
UpdatePruningStep = UpdatePruning

"""A callback's state that survives a kill: variables saved and restored with the model's weights.

Keras' ``BackupAndRestore`` (like ``ModelCheckpoint`` and ``model.save_weights``) saves what the
model's saveable tree holds: its layers' variables and its optimizer's. A callback's Python
attributes die with the process, so a run resumed after ``kill -9`` would start them afresh.
Most tfcompress callbacks need none: their state is the optimizer's step, the pruning wrappers'
``pruning_step`` or the layers' masks. The rest (``WeightRewinding``'s rewind point) keep it in
a `CallbackState` that `attach_state` hangs on the model in ``set_model``. Keras calls
``set_model`` on every callback when ``fit`` builds its callback list, before any
``on_train_begin``, so the state is in place before ``BackupAndRestore`` restores the
checkpoint, whichever of the two callbacks comes first. `detach_state` removes it in
``on_train_end``, so a file saved after ``fit`` holds only the model, and a model without the
state loads a file that has it (the extra entries are ignored).

Example:

>>> import keras
>>> from tfcompress.callbacks._state import attach_state, detach_state
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")])
>>> state = attach_state(model, "_tfcompress_example", {"count": ((), "int64")})
>>> _ = state.values["count"].assign(7)
>>> path = "/tmp/tfcompress_state_example.weights.h5"
>>> model.save_weights(path)
>>> _ = state.values["count"].assign(0)
>>> model.load_weights(path)
>>> int(state.values["count"].numpy()), bool(state.restored)
(7, True)
>>> detach_state(model, "_tfcompress_example")
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError


@keras.saving.register_keras_serializable(package="tfcompress")
class CallbackState(keras.layers.Layer):
    """Named variables of one callback, saved in the model's weight files while ``fit`` runs.

    Never part of a model's graph or config; ``values[name]`` is the variable. Loading a file
    that has no entry for it (written before the callback was used) leaves the values as they
    are and ``restored`` False.

    Args:
        specs: ``{name: (shape, dtype)}`` of the variables, in a fixed order.
    """

    def __init__(self, specs: dict[str, tuple[tuple[int, ...], str]], **kwargs: Any):
        super().__init__(trainable=False, **kwargs)
        self.specs = _normalized(specs)
        self.values = {
            key: self.add_weight(shape=shape, dtype=dtype, initializer="zeros", trainable=False,
                                 name=f"state_{i}")
            for i, (key, (shape, dtype)) in enumerate(self.specs.items())
        }
        self.restored = False
        self.built = True

    def call(self, inputs):  # never called: the layer only holds variables
        return inputs

    def load_own_variables(self, store) -> None:
        if len(store.keys()) == 0:  # a file written without this state
            return
        if len(store.keys()) != len(self.values):
            raise TfcompressError(
                f"the checkpoint holds {len(store.keys())} values of this callback's state, the "
                f"callback has {len(self.values)}", self.name,
                "resume with the model and callbacks of the run that wrote the checkpoint, or delete "
                "the backup directory to start afresh",
            )
        for i, variable in enumerate(self.values.values()):
            value = np.asarray(store[str(i)])
            if value.shape != tuple(variable.shape):
                raise TfcompressError(
                    f"the checkpoint's value {variable.name} has shape {value.shape}, the callback's "
                    f"{tuple(variable.shape)}", self.name,
                    "resume with the model of the run that wrote the checkpoint",
                )
            variable.assign(value)
        self.restored = True

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["specs"] = {k: (list(shape), dtype) for k, (shape, dtype) in self.specs.items()}
        return config


def _normalized(specs: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {str(k): (tuple(int(d) for d in shape), str(dtype)) for k, (shape, dtype) in specs.items()}


def attach_state(model: keras.Model, attribute: str, specs: dict[str, tuple[tuple[int, ...], str]],
                 reuse: CallbackState | None = None) -> CallbackState:
    """Hang a `CallbackState` with ``specs`` on ``model`` under ``attribute`` and return it.

    ``reuse``: the callback's state from an earlier ``fit`` of this model; it is attached again
    (its values are the callback's progress) when its specs are still ``specs``, else a new one
    with zeros is made. The attribute is set without Keras' attribute tracking, so the model's
    ``weights`` and ``summary`` do not change.
    """
    if reuse is not None and reuse.specs == _normalized(specs):
        state = reuse
    else:
        state = CallbackState(specs, name=attribute.strip("_"))
    object.__setattr__(model, attribute, state)
    return state


def detach_state(model: keras.Model, attribute: str) -> None:
    """Remove the state ``attach_state`` hung on ``model`` (nothing if there is none)."""
    model.__dict__.pop(attribute, None)

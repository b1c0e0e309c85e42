"""MC dropout compiled with S frozen masks: weights stored once, the masks drawn at export.

MC dropout (Gal & Ghahramani 2016; Vadera et al. 2021, section 2.2.2) keeps dropout on at
prediction time and averages S stochastic passes. A converter strips dropout (Keras'
``Dropout(..)(x, training=True)`` becomes the deterministic model), and TFLite Micro has no
random op. :func:`mc_dropout` draws S masks once and compiles them as constants: the layers
before the first dropout run once; from there the graph carries a batch of ``batch x S``
samples ("batching models instead of inputs", section 2.2.1) through the same weights, so the
file stores each weight once plus the masks.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import keras
import numpy as np
from keras import ops

from tfcompress.core import trace
from tfcompress.core.graph import call_copy
from tfcompress.errors import TfcompressError
from tfcompress.uncertainty.posterior import Posterior

__all__ = ["FrozenNoise", "TileMembers", "mc_dropout", "register_dropout"]

# layer type -> sampler(layer, feature_shape, samples, rng) -> (scale, shift or None), each
# shaped [samples, *noise_shape] with noise_shape broadcasting to the feature shape
_SAMPLERS: dict[type, Callable] = {}


def register_dropout(layer_type: type, sampler: Callable) -> None:
    """Teach :func:`mc_dropout` a dropout-like layer of your own.

    ``sampler(layer, feature_shape, samples, rng)`` returns ``(scale, shift)``: arrays
    ``[samples, *noise_shape]`` (``noise_shape`` broadcasting to ``feature_shape``, the
    layer's input shape without the batch) such that sample ``s`` of the layer computes
    ``x * scale[s] + shift[s]``; ``shift`` may be None.

    Example:
        >>> def sampler(layer, shape, samples, rng):
        ...     keep = rng.random((samples, *shape)) >= layer.rate
        ...     return keep / (1 - layer.rate), None
        >>> register_dropout(keras.layers.Dropout, sampler)
    """
    _SAMPLERS[layer_type] = sampler


def _dropout(layer, shape, samples, rng):
    noise = _noise_shape(layer, shape)
    keep = rng.random((samples, *noise)) >= layer.rate
    return keep.astype("float32") / np.float32(1 - layer.rate), None


def _noise_shape(layer, shape):
    wanted = getattr(layer, "noise_shape", None)
    if wanted is None:
        return tuple(shape)
    wanted = tuple(wanted)[1:]  # Keras' noise_shape includes the batch
    return tuple(s if w is None else int(w) for w, s in zip(wanted, shape, strict=True))


def _spatial_dropout(layer, shape, samples, rng):
    channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
    noise = [1] * len(shape)
    axis = 0 if channels_first else len(shape) - 1
    noise[axis] = shape[axis]
    keep = rng.random((samples, *noise)) >= layer.rate
    return keep.astype("float32") / np.float32(1 - layer.rate), None


def _gaussian_dropout(layer, shape, samples, rng):
    # Srivastava et al. 2014, section 10: multiplicative N(1, rate / (1 - rate)) noise
    std = np.sqrt(layer.rate / (1.0 - layer.rate))
    return (1.0 + std * rng.standard_normal((samples, *shape))).astype("float32"), None


def _gaussian_noise(layer, shape, samples, rng):
    return np.ones((samples, *[1] * len(shape)), "float32"), \
        (layer.stddev * rng.standard_normal((samples, *shape))).astype("float32")


for _type, _sampler in ((keras.layers.Dropout, _dropout), (keras.layers.SpatialDropout1D, _spatial_dropout),
                        (keras.layers.SpatialDropout2D, _spatial_dropout),
                        (keras.layers.SpatialDropout3D, _spatial_dropout),
                        (keras.layers.GaussianDropout, _gaussian_dropout),
                        (keras.layers.GaussianNoise, _gaussian_noise)):
    register_dropout(_type, _sampler)


def _sampler_for(layer) -> Callable | None:
    for cls in type(layer).__mro__:
        if cls in _SAMPLERS:
            return _SAMPLERS[cls]
    return None


def _groups(feature_shape: tuple, noise_shape: tuple) -> tuple[tuple, tuple]:
    """Merge neighbouring feature axes with the same broadcast status (fewer, lower-rank ops)."""
    feat, noise = [], []
    for f, n in zip(feature_shape, noise_shape, strict=True):
        full = n != 1 or f == 1
        if feat and (noise[-1] != 1 or feat[-1] == 1) == full:
            feat[-1] *= f
            noise[-1] *= n
        else:
            feat.append(f)
            noise.append(n)
    return tuple(feat), tuple(noise)


@keras.saving.register_keras_serializable(package="tfcompress")
class FrozenNoise(keras.layers.Layer):
    """S frozen samples of a dropout-like layer: sample ``s`` computes ``x * scale[s] + shift[s]``.

    Input ``[batch, *features]`` (``tile=True``: the first frozen layer, which starts the member
    batch) or ``[batch * S, *features]`` (members already batched, sample-minor); output
    ``[batch * S, *features]``. The masks are non-trainable weights, saved with the model.

    Example:
        >>> mask = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")     # S = 2 masks of 2 units
        >>> layer = FrozenNoise(samples=2, feature_shape=(2,), noise_shape=(2,), tile=True)
        >>> layer.build((None, 2)); _ = layer.scale.assign(mask)
        >>> np.asarray(layer(np.array([[3.0, 4.0]], "float32"))).tolist()
        [[3.0, 0.0], [0.0, 8.0]]
    """

    def __init__(self, samples: int, feature_shape, noise_shape, tile: bool, additive: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.samples = int(samples)
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.noise_shape = tuple(int(s) for s in noise_shape)
        self.tile = bool(tile)
        self.additive = bool(additive)
        self._groups = _groups(self.feature_shape, self.noise_shape)

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(self.samples, *self.noise_shape),
                                     initializer="ones", trainable=False)
        self.shift = self.add_weight(name="shift", shape=(self.samples, *self.feature_shape),
                                     initializer="zeros", trainable=False) if self.additive else None

    def call(self, x):
        feat, noise = self._groups
        y = ops.reshape(x, (-1, 1 if self.tile else self.samples, *feat))
        y = y * ops.reshape(self.scale, (1, self.samples, *noise))
        if self.shift is not None:
            y = y + ops.reshape(self.shift, (1, self.samples, *feat))
        return ops.reshape(y, (-1, *self.feature_shape))

    def compute_output_shape(self, input_shape):
        return (None, *self.feature_shape)

    def get_config(self):
        return {**super().get_config(), "samples": self.samples, "feature_shape": self.feature_shape,
                "noise_shape": self.noise_shape, "tile": self.tile, "additive": self.additive}


@keras.saving.register_keras_serializable(package="tfcompress")
class TileMembers(keras.layers.Layer):
    """``[batch, *features]`` -> ``[batch * S, *features]``, each row repeated S times (sample-minor).

    Where a tensor from before the first frozen dropout meets one after it (a skip
    connection), it is repeated so both carry the member batch.

    Example:
        >>> np.asarray(TileMembers(2)(np.array([[1.0], [2.0]], "float32"))).ravel().tolist()
        [1.0, 1.0, 2.0, 2.0]
    """

    def __init__(self, samples: int, **kwargs):
        super().__init__(**kwargs)
        self.samples = int(samples)

    def call(self, x):
        feat = tuple(x.shape[1:])
        flat = ops.reshape(x, (-1, 1, prod(feat)))
        return ops.reshape(ops.concatenate([flat] * self.samples, axis=1), (-1, *feat))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "samples": self.samples}


def mc_dropout(model, samples: int = 8, *, seed: int = 0, layers: list[str] | None = None,
               name: str | None = None) -> Posterior:
    """MC dropout as a deterministic posterior: ``samples`` frozen masks, weights stored once.

    Every dropout-like layer of ``model`` (``Dropout``, ``SpatialDropout*``, ``GaussianDropout``,
    ``GaussianNoise``, and types added with :func:`register_dropout`; or only those named in
    ``layers``) is replaced by :class:`FrozenNoise` holding ``samples`` masks drawn with
    ``seed``, each one what the layer draws in training mode (Gal & Ghahramani 2016, eq. 8:
    inverted dropout scales kept units by 1 / (1 - p)). The rest of ``model`` is reused, not
    copied: the posterior shares the model's weights.

    Args:
        model: a Functional or Sequential model returning class logits ``[batch, classes]``.
        samples: S, the number of frozen masks.
        seed: seed of the masks (the same seed gives the same posterior).
        layers: names of the layers to freeze (default: every dropout-like layer).
        name: the posterior model's name.

    Returns:
        A :class:`~tfcompress.uncertainty.posterior.Posterior` (``kind="mc_dropout"``, ``single``
        = ``model``).

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
        ...                           keras.layers.Dropout(0.5), keras.layers.Dense(3)])
        >>> posterior = mc_dropout(model, samples=4)
        >>> posterior.member_logits(np.ones((2, 8), "float32")).shape
        (2, 4, 3)
    """
    if samples < 2:
        raise TfcompressError(f"samples must be >= 2, got {samples}", "mc_dropout(samples=...)",
                              "MC dropout averages several masks; use samples >= 2")
    graph = trace(model, where="tfcompress.uncertainty.mc_dropout")
    output_shape = tuple(model.outputs[0].shape) if len(model.outputs) == 1 else ()
    if len(output_shape) != 2:
        raise TfcompressError(f"the model returns {output_shape if output_shape else 'several outputs'}, "
                              "not [batch, classes] logits", model.name, "pass a single-output logits model")
    rng = np.random.default_rng(seed)
    batched: set[int] = set()   # ids of the new tensors that carry the member batch
    frozen: list[str] = []

    def replace(node, args, kwargs):
        sampler = _sampler_for(node.op) if node.is_layer else None
        if sampler is not None and (layers is None or node.name in layers):
            (x,) = args
            shape = tuple(int(s) for s in x.shape[1:])
            scale, shift = sampler(node.op, shape, samples, rng)
            layer = FrozenNoise(samples, shape, scale.shape[1:], tile=id(x) not in batched,
                                additive=shift is not None, name=f"{node.name}_frozen")
            out = layer(x)
            layer.scale.assign(scale)
            if shift is not None:
                layer.shift.assign(shift)
            frozen.append(node.name)
            batched.add(id(out))
            return out
        tensors = keras.tree.flatten((args, kwargs))
        if not any(id(t) in batched for t in tensors):
            return call_copy(node, args, kwargs, layer=node.op if node.is_layer else None)

        def tile(t):
            if keras.utils.is_keras_tensor(t) and id(t) not in batched:
                return TileMembers(samples)(t)
            return t

        args, kwargs = keras.tree.map_structure(tile, (args, kwargs))
        out = call_copy(node, args, kwargs, layer=node.op if node.is_layer else None)
        for t in keras.tree.flatten(out):
            batched.add(id(t))
        return out

    from tfcompress.core import rebuild

    body = rebuild(graph, replace, name=f"{model.name}_mc_body")
    if not frozen:
        raise TfcompressError("the model has no dropout-like layer to freeze" if layers is None
                              else f"no dropout-like layer named {layers}", model.name,
                              "add Dropout before the layers to sample, or name them in layers=[...]")
    if id(body.outputs[0]) not in batched:
        raise TfcompressError("the output does not depend on any frozen dropout", model.name,
                              "put the dropout on the path to the output")
    classes = int(output_shape[1])
    # [batch * S, C] -> [batch, S, C]; a Reshape layer would insist on the static sizes matching
    logits = ops.reshape(body.outputs[0], (-1, samples, classes))
    logits_model = keras.Model(body.inputs, logits, name=name or f"{model.name}_mc_dropout")
    return Posterior(logits_model, kind="mc_dropout", single=model,
                     rebuild=lambda transform: mc_dropout(transform(model), samples, seed=seed, layers=layers,
                                                          name=name))

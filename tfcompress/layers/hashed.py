"""HashedNets: Dense and Conv2D layers whose virtual weights are shared through a hash.

Chen et al., ICML 2015, "Compressing Neural Networks with the Hashing Trick", eq. 3-6: the
virtual weight V_ij = xi(i, j) * w_{h(i, j)} is read from K real parameters w, where h maps the
(flattened) index of V to a bucket in [0, K) and xi to a sign in {-1, +1}; K = ceil(compression
* size of V). The gradient of a real parameter is the sum of the gradients of the virtual
weights hashed to it, times their signs (eq. 6), which ``tf.gather`` gives.

The hash is MurmurHash3's 32-bit finalizer (fmix32) applied to the index mixed with a seed,
computed in NumPy with explicit uint32 arithmetic: the same buckets on every platform and
after save / load (the index map is recomputed from the config, never stored, never Python's
``hash``). `materialize` returns plain Dense / Conv2D layers holding V, for export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError

_M1 = np.uint32(0x85EBCA6B)
_M2 = np.uint32(0xC2B2AE35)
_GOLDEN = np.uint32(0x9E3779B9)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 fmix32 on uint32 arrays (wrapping arithmetic)."""
    h = np.asarray(h, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint32(16))
        h = (h * _M1).astype(np.uint32)
        h = h ^ (h >> np.uint32(13))
        h = (h * _M2).astype(np.uint32)
        h = h ^ (h >> np.uint32(16))
    return h


def hash_indices(size: int, buckets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket h(i) in [0, buckets) and sign xi(i) in {-1, +1} of every flat index i < size."""
    index = np.arange(size, dtype=np.uint64).astype(np.uint32)
    with np.errstate(over="ignore"):
        key = (index * _GOLDEN).astype(np.uint32) ^ np.uint32(seed & 0xFFFFFFFF)
        bucket = fmix32(key) % np.uint32(buckets)
        sign_bits = fmix32(key ^ np.uint32(0x5BD1E995)) & np.uint32(1)
    return bucket.astype(np.int32), np.where(sign_bits == 1, 1.0, -1.0).astype(np.float32)


class _HashedMixin:
    tfcompress_hashed = True

    def _init_hash(self, compression: float, seed: int) -> None:
        if not 0.0 < float(compression) <= 1.0:
            raise TfcompressError(f"compression must be in (0, 1], got {compression}", self.name,
                                  "pass the fraction of real parameters, e.g. 1/8")
        self.compression = float(compression)
        self.seed = int(seed)

    def _build_hashed_kernel(self, shape: tuple[int, ...]) -> None:
        size = int(np.prod(shape))
        self.buckets = max(1, math.ceil(self.compression * size))
        fan_in = int(np.prod(shape[:-1]))
        self.hashed_weights = self.add_weight(
            name="hashed_weights", shape=(self.buckets,),
            initializer=keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / (fan_in + shape[-1]))),
        )
        bucket, sign = hash_indices(size, self.buckets, self.seed)
        self._bucket = bucket.reshape(shape)
        self._sign = sign.reshape(shape)
        self._virtual_shape = shape

    # Dense / Conv2D save their kernel by name; a hashed layer stores its real parameters
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    @property
    def kernel(self):
        """The virtual kernel (a tensor computed from the hashed weights, not a variable)."""
        return self.virtual_kernel()

    def virtual_kernel(self):
        from keras import ops

        return ops.take(self.hashed_weights, self._bucket) * self._sign

    def tfcompress_effective_weights(self):
        weights = [keras.ops.convert_to_numpy(self.virtual_kernel())]
        if self.use_bias:
            weights.append(keras.ops.convert_to_numpy(self.bias))
        return weights

    def _hash_config(self) -> dict[str, Any]:
        return {"compression": self.compression, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfcompress")
class HashedDense(_HashedMixin, keras.layers.Dense):
    """Dense whose (in, units) kernel is hashed into ceil(compression * in * units) parameters."""

    def __init__(self, units, compression: float = 1 / 8, seed: int = 0, **kwargs):
        super().__init__(units, **kwargs)
        self._init_hash(compression, seed)

    def build(self, input_shape):
        self._build_hashed_kernel((int(input_shape[-1]), self.units))
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
        self.built = True

    def call(self, inputs, training=None):
        from keras import ops

        out = ops.matmul(inputs, self.virtual_kernel())
        if self.use_bias:
            out = out + self.bias
        return self.activation(out)

    def get_config(self):
        return {**super().get_config(), **self._hash_config()}


@keras.saving.register_keras_serializable(package="tfcompress")
class HashedConv2D(_HashedMixin, keras.layers.Conv2D):
    """Conv2D whose (kh, kw, in, filters) kernel is hashed into ceil(compression * size) parameters."""

    def __init__(self, filters, kernel_size, compression: float = 1 / 8, seed: int = 0, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self._init_hash(compression, seed)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self._build_hashed_kernel((*self.kernel_size, channels // self.groups, self.filters))
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
        self.built = True

    def call(self, inputs, training=None):
        from keras import ops

        out = ops.conv(inputs, self.virtual_kernel(), strides=self.strides, padding=self.padding,
                       data_format=self.data_format, dilation_rate=self.dilation_rate)
        if self.use_bias:
            out = out + self.bias
        return self.activation(out)

    def get_config(self):
        return {**super().get_config(), **self._hash_config()}


def materialize(model) -> keras.Model:
    """The model with hashed layers replaced by plain Dense / Conv2D holding the virtual weights."""
    pairs = []

    def replace(layer):
        if getattr(layer, "tfcompress_hashed", False):
            base = keras.layers.Dense if isinstance(layer, keras.layers.Dense) else keras.layers.Conv2D
            config = {k: v for k, v in layer.get_config().items() if k not in ("compression", "seed")}
            new = base.from_config(config)
        else:
            new = layer.__class__.from_config(layer.get_config())
        pairs.append((layer, new))
        return new

    plain = keras.models.clone_model(model, clone_function=replace)
    for source, target in pairs:
        if getattr(source, "tfcompress_hashed", False):
            target.set_weights(source.tfcompress_effective_weights())
        elif source.weights:
            target.set_weights(source.get_weights())
    return plain


@dataclass
class HashedReport:
    real_params: int
    virtual_params: int
    float32_bytes: int

    @property
    def compression(self) -> float:
        return self.real_params / max(self.virtual_params, 1)


def hashed_report(model) -> HashedReport:
    """Real (stored) and virtual parameter counts of the whole model, and float32 storage."""
    real = virtual = 0
    for layer in model.layers:
        if getattr(layer, "tfcompress_hashed", False):
            real += layer.buckets + (layer.bias.shape[0] if layer.use_bias else 0)
            virtual += int(np.prod(layer._virtual_shape)) + (layer.bias.shape[0] if layer.use_bias else 0)
        else:
            count = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
            real += count
            virtual += count
    return HashedReport(real, virtual, 4 * real)

"""HashedNets: Dense and Conv2D layers whose virtual weights are shared through a hash.

Chen, Wilson, Tyree, Weinberger and Chen, ICML 2015, "Compressing Neural Networks with the
Hashing Trick":

* eq. 3 / 5: the virtual weight ``V_ij = xi(i, j) * w_{h(i, j)}`` is read from ``K`` real
  parameters ``w``; ``h`` maps the index of ``V`` to a bucket in ``[0, K)`` and ``xi`` to a sign
  in ``{-1, +1}`` (the sign hash makes the shared weights unbiased, sec. 4.3). Here
  ``K = ceil(compression * size of V)``.
* eq. 6: the gradient of a real parameter is the sum, over the virtual weights hashed to it,
  of their gradients times their signs: ``dL/dw_k = sum_{ij: h(i,j)=k} xi(i,j) dL/dV_ij``,
  which is exactly the gradient of ``tf.gather`` (a segment sum of the incoming gradient).

The hash works on the flat (row-major) index ``i`` of ``V`` and a 32-bit ``seed``, in NumPy with
explicit uint32 wrapping arithmetic, so it gives the same buckets on every platform and after
save / load (it is recomputed from the layer config at build, never stored, never Python's
``hash``)::

    key(i)  = ((i * 0x9E3779B9) mod 2**32) XOR seed
    h(i)    = fmix32(key(i)) mod K
    xi(i)   = +1 if fmix32(key(i) XOR 0x5BD1E995) is odd else -1

with ``fmix32`` the MurmurHash3 32-bit finalizer (Appleby, SMHasher). :func:`materialize`
returns plain Dense / Conv2D layers holding ``V`` (what the TFLite file stores);
:func:`hashed_report` counts real and virtual parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from tfcompress.core import rebuild, trace
from tfcompress.errors import TfcompressError

_M1 = np.uint32(0x85EBCA6B)
_M2 = np.uint32(0xC2B2AE35)
_GOLDEN = np.uint32(0x9E3779B9)
_SIGN_SALT = np.uint32(0x5BD1E995)


def fmix32(h: np.ndarray | int) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer ``fmix32`` on uint32 values (wrapping arithmetic)."""
    h = np.asarray(h, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint32(16))
        h = (h * _M1).astype(np.uint32)
        h = h ^ (h >> np.uint32(13))
        h = (h * _M2).astype(np.uint32)
        h = h ^ (h >> np.uint32(16))
    return h


def hash_indices(size: int, buckets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket ``h(i)`` in ``[0, buckets)`` (int32) and sign ``xi(i)`` in ``{-1, +1}`` (float32)
    of every flat index ``i < size`` (Chen et al. 2015, eq. 3; hash in the module docstring)."""
    size, buckets = int(size), int(buckets)
    if not 0 <= size < 2**32 or not 1 <= buckets < 2**31:
        raise TfcompressError(f"cannot hash {size} indices into {buckets} buckets",
                              "hash_indices", "use 0 <= size < 2**32 and 1 <= buckets < 2**31")
    index = np.arange(size, dtype=np.uint32)
    with np.errstate(over="ignore"):
        key = (index * _GOLDEN).astype(np.uint32) ^ np.uint32(int(seed) & 0xFFFFFFFF)
        bucket = fmix32(key) % np.uint32(buckets)
        sign_bits = fmix32(key ^ _SIGN_SALT) & np.uint32(1)
    return bucket.astype(np.int32), np.where(sign_bits == 1, 1.0, -1.0).astype(np.float32)


class _HashedMixin:
    """Shared by HashedDense / HashedConv2D: real weights, the hash and the virtual kernel."""

    tfcompress_hashed = True

    def _init_hash(self, compression: float, seed: int) -> None:
        try:
            compression = float(compression)
        except (TypeError, ValueError):
            compression = float("nan")
        if not 0.0 < compression <= 1.0:
            raise TfcompressError(f"compression must be in (0, 1], got {compression!r}",
                                  self.name, "pass the fraction of real parameters, e.g. 1/8")
        if getattr(self, "lora_rank", None):
            raise TfcompressError("LoRA is not supported on a hashed layer", self.name,
                                  "leave lora_rank unset")
        self.compression = compression
        self.seed = int(seed)

    def _build_hashed_kernel(self, shape: tuple[int, ...]) -> None:
        size = int(np.prod(shape))
        self.buckets = max(1, math.ceil(self.compression * size))
        initializer = keras.initializers.get(self.kernel_initializer)
        buckets = self.buckets

        def init_real(_shape, dtype=None):
            # iid initializers (Glorot, He, ...): K draws with the virtual kernel's fans
            virtual = initializer(shape, dtype=dtype)
            return keras.ops.reshape(virtual, (-1,))[:buckets]

        self.hashed_weights = self.add_weight(
            name="hashed_weights", shape=(self.buckets,), initializer=init_real,
            regularizer=self.kernel_regularizer, constraint=self.kernel_constraint,
        )
        bucket, sign = hash_indices(size, self.buckets, self.seed)
        self._bucket = bucket.reshape(shape)
        self._sign = sign.reshape(shape)
        self._virtual_shape = tuple(shape)

    def _build_bias(self, units: int) -> None:
        self.bias = self.add_weight(
            name="bias", shape=(units,), initializer=self.bias_initializer,
            regularizer=self.bias_regularizer, constraint=self.bias_constraint,
        ) if self.use_bias else None

    # Dense / Conv2D save their kernel by name; a hashed layer stores its real parameters
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    @property
    def kernel(self):
        """The virtual kernel V (a tensor computed from the real weights, not a variable)."""
        if not self.built:
            raise AttributeError("build the layer before reading its kernel")
        return self.virtual_kernel()

    @property
    def virtual_shape(self) -> tuple[int, ...]:
        return self._virtual_shape

    def virtual_kernel(self):
        """V = xi * w[h] (Chen et al. 2015, eq. 3); the gather gives eq. 6's gradient."""
        return keras.ops.take(self.hashed_weights, self._bucket) * self._sign

    def tfcompress_effective_weights(self) -> list[np.ndarray]:
        weights = [keras.ops.convert_to_numpy(self.virtual_kernel())]
        if self.use_bias:
            weights.append(keras.ops.convert_to_numpy(self.bias))
        return weights

    def _hash_config(self) -> dict[str, Any]:
        return {"compression": self.compression, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfcompress")
class HashedDense(_HashedMixin, keras.layers.Dense):
    """Dense whose (in, units) kernel is shared among ``ceil(compression * in * units)`` real
    parameters by the HashedNets hash (Chen et al., ICML 2015, eq. 3-6).

    Args:
        units: output size.
        compression: fraction of real parameters, in (0, 1] (1/8 = eight times fewer).
        seed: the hash seed (32 bits); layers with different seeds share differently.
        **kwargs: everything ``keras.layers.Dense`` takes (activation, use_bias, initializers,
            regularizers, constraints); the kernel ones apply to the real parameters.

    Example:
        >>> layer = HashedDense(4, compression=0.25)
        >>> model = keras.Sequential([keras.Input((8,)), layer])
        >>> layer.virtual_shape, [tuple(w.shape) for w in layer.trainable_weights]    # 32 virtual weights, 8 real
        ((8, 4), [(8,), (4,)])
        >>> hashed_report(model).real_params, hashed_report(model).virtual_params
        (12, 36)
    """

    def __init__(self, units, compression: float = 1 / 8, seed: int = 0, **kwargs):
        super().__init__(units, **kwargs)
        self._init_hash(compression, seed)

    def build(self, input_shape):
        self._build_hashed_kernel((int(input_shape[-1]), self.units))
        self._build_bias(self.units)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_shape[-1]})
        self.built = True

    def call(self, inputs, training=None):
        return super().call(inputs)  # Dense.call reads self.kernel: the virtual kernel

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._hash_config()}


@keras.saving.register_keras_serializable(package="tfcompress")
class HashedConv2D(_HashedMixin, keras.layers.Conv2D):
    """Conv2D whose (kh, kw, in, filters) kernel is shared among ``ceil(compression * size)``
    real parameters by the HashedNets hash (Chen et al., ICML 2015, eq. 3-6).

    Args:
        filters, kernel_size: as ``keras.layers.Conv2D``.
        compression: fraction of real parameters, in (0, 1].
        seed: the hash seed (32 bits).
        **kwargs: everything ``keras.layers.Conv2D`` takes.

    Example:
        >>> layer = HashedConv2D(4, 3, compression=0.125, seed=1)
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), layer])
        >>> model(np.ones((1, 8, 8, 1), "float32")).shape, layer.virtual_shape
        (TensorShape([1, 6, 6, 4]), (3, 3, 1, 4))
        >>> kernel = keras.ops.convert_to_numpy(layer.virtual_kernel())     # +-w[h(i)]: a sign hash too
        >>> int(np.unique(np.abs(kernel)).size) <= 5                          # ceil(36 / 8) real values
        True
    """

    def __init__(self, filters, kernel_size, compression: float = 1 / 8, seed: int = 0,
                 **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self._init_hash(compression, seed)

    def build(self, input_shape):
        axis = -1 if self.data_format == "channels_last" else 1
        channels = int(input_shape[axis])
        if channels % self.groups:
            raise TfcompressError(f"{channels} input channels do not split into {self.groups} "
                                  "groups", self.name, "use a groups value dividing the channels")
        self.compute_output_shape(input_shape)
        self._build_hashed_kernel((*self.kernel_size, channels // self.groups, self.filters))
        self._build_bias(self.filters)
        self.input_spec = keras.layers.InputSpec(min_ndim=4, axes={axis: channels})
        self.built = True

    def call(self, inputs):
        return super().call(inputs)  # BaseConv.call reads self.kernel: the virtual kernel

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._hash_config()}


def _is_graph_model(model) -> bool:
    return isinstance(model, keras.Model) and type(model).__name__ in ("Functional", "Sequential")


def materialize(model: keras.Model) -> keras.Model:
    """The model with every hashed layer replaced by a plain Dense / Conv2D holding the
    virtual weights ``V`` (what a TFLite file stores); other layers are copied."""
    if not _is_graph_model(model):
        raise TfcompressError(f"cannot materialize a {type(model).__name__}",
                              getattr(model, "name", "model"),
                              "build the model as keras.Sequential or with keras.Input")
    def replace(node, args, kwargs):
        layer = node.op
        if not getattr(layer, "tfcompress_hashed", False):
            return None
        base = keras.layers.Dense if isinstance(layer, keras.layers.Dense) else keras.layers.Conv2D
        config = {k: v for k, v in layer.get_config().items() if k not in ("compression", "seed")}
        new = base.from_config(config)
        out = new(*args, **kwargs)
        new.set_weights(layer.tfcompress_effective_weights())
        return out

    return rebuild(trace(model, where="materialize", inline=False), replace, as_clone=True)


@dataclass
class HashedReport:
    """Parameter counts of a model with hashed layers (trainable weights only).

    ``real_params``: what is stored (K per hashed layer, plus biases and other layers);
    ``virtual_params``: the same model with full kernels; ``float32_bytes``: 4 * real_params.
    """

    real_params: int
    virtual_params: int
    float32_bytes: int
    layers: dict[str, tuple[int, int]]

    @property
    def compression(self) -> float:
        """real / virtual parameters of the whole model."""
        return self.real_params / max(self.virtual_params, 1)

    def text(self) -> str:
        lines = [f"{'layer':24s} {'real':>12s} {'virtual':>12s}"]
        lines += [f"{name:24s} {r:12,d} {v:12,d}" for name, (r, v) in self.layers.items()]
        lines.append(f"{'total':24s} {self.real_params:12,d} {self.virtual_params:12,d}"
                     f"   float32 {self.float32_bytes:,d} bytes ({self.compression:.4f} of "
                     "virtual)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def _leaf_layers(model):
    for layer in getattr(model, "layers", []):
        if _is_graph_model(layer):
            yield from _leaf_layers(layer)
        else:
            yield layer


def hashed_report(model: keras.Model) -> HashedReport:
    """Real (stored) and virtual parameter counts of ``model``, and its float32 storage."""
    if not isinstance(model, keras.Model):
        raise TfcompressError(f"expected a keras.Model, got {type(model).__name__}",
                              "hashed_report", "pass the model")
    per_layer: dict[str, tuple[int, int]] = {}
    for layer in _leaf_layers(model):
        count = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
        if getattr(layer, "tfcompress_hashed", False) and layer.built:
            virtual = count - layer.buckets + int(np.prod(layer.virtual_shape))
        else:
            virtual = count
        if count:
            per_layer[layer.name] = (count, virtual)
    real = sum(r for r, _ in per_layer.values())
    virtual = sum(v for _, v in per_layer.values())
    return HashedReport(real, virtual, 4 * real, per_layer)

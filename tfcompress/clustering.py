"""Weight clustering (weight sharing) and the Deep Compression size estimate.

``cluster(model, n_clusters)`` follows Han, Mao and Dally, ICLR 2016, "Deep Compression", sec. 3:
each kernel's weights are grouped by k-means (Lloyd's algorithm; linear initialization between
min and max, the paper's best, or k-means++ / density), every weight is replaced by its cluster
centroid, and fine-tuning trains the centroids: the gradient of a centroid is the sum of the
gradients of the weights in its cluster (eq. 3), which ``gather`` gives. The assignment is
fixed after clustering, as in the paper. With ``preserve_sparsity`` the zeros of a pruned
kernel are not clustered and stay exactly 0 (tfmot's sparsity-preserving clustering).

``deep_compression_size`` estimates the paper's storage (sec. 2-4): non-zero weights in a
sparse format with relative indices (8 bits for convolutions, 5 for dense layers, a filler
entry where a gap does not fit), cluster indices and relative indices Huffman-coded (code
lengths from their histograms), a float32 codebook per layer, float32 biases.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from tfcompress.errors import TfcompressError

CLUSTERABLE = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", iterations: int = 30,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm on scalars: (centroids, assignment)."""
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size == 0:
        return np.zeros(k), np.zeros(0, np.int32)
    k = min(k, np.unique(values).size)
    if init == "linear":
        centroids = np.linspace(values.min(), values.max(), k)
    elif init == "density":
        centroids = np.quantile(values, (np.arange(k) + 0.5) / k)
    elif init == "kmeans++":
        rng = np.random.default_rng(seed)
        centroids = [values[rng.integers(values.size)]]
        for _ in range(1, k):
            d2 = np.min((values[:, None] - np.array(centroids)[None]) ** 2, axis=1)
            centroids.append(values[rng.choice(values.size, p=d2 / d2.sum())] if d2.sum() > 0 else values[0])
        centroids = np.sort(np.array(centroids))
    else:
        raise TfcompressError(f"unknown init {init!r}", "cluster", "use 'linear', 'density' or 'kmeans++'")
    assignment = np.zeros(values.size, np.int32)
    for _ in range(iterations):
        assignment = np.argmin(np.abs(values[:, None] - centroids[None]), axis=1).astype(np.int32)
        updated = centroids.copy()
        for c in range(k):
            members = values[assignment == c]
            if members.size:
                updated[c] = members.mean()
        if np.allclose(updated, centroids):
            break
        centroids = updated
    return centroids, assignment


@keras.saving.register_keras_serializable(package="tfcompress")
class ClusterWeights(keras.layers.Wrapper):
    """A layer whose kernel is ``centroids[index]`` (times a fixed zero mask)."""

    tfcompress_clustered = True

    def __init__(self, layer, n_clusters: int = 16, init: str = "linear", preserve_sparsity: bool = True,
                 **kwargs):
        super().__init__(layer, **kwargs)
        if not isinstance(layer, CLUSTERABLE):
            raise TfcompressError(f"cannot cluster a {type(layer).__name__}", layer.name,
                                  "cluster Dense, Conv2D or DepthwiseConv2D layers")
        if int(n_clusters) < 2:
            raise TfcompressError(f"n_clusters must be >= 2, got {n_clusters}", layer.name)
        self.n_clusters, self.init, self.preserve_sparsity = int(n_clusters), init, bool(preserve_sparsity)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        shape = tuple(self.layer.kernel.shape)
        self.centroids = self.add_weight(name="centroids", shape=(self.n_clusters,), initializer="zeros")
        self.index = self.add_weight(name="index", shape=shape, initializer="zeros", dtype="int32", trainable=False)
        self.sparsity_mask = self.add_weight(name="sparsity_mask", shape=shape, initializer="ones", trainable=False)
        self.layer.kernel.trainable = False  # the centroids are what is trained
        self.built = True

    def initialize_clusters(self) -> None:
        kernel = keras.ops.convert_to_numpy(self.layer.kernel)
        mask = (kernel != 0) if self.preserve_sparsity else np.ones_like(kernel, bool)
        centroids, assignment = kmeans_1d(kernel[mask], self.n_clusters, self.init)
        full = np.zeros(self.n_clusters)
        full[: centroids.size] = centroids
        index = np.zeros(kernel.shape, np.int32)
        index[mask] = assignment
        self.centroids.assign(full.astype("float32"))
        self.index.assign(index)
        self.sparsity_mask.assign(mask.astype("float32"))

    def clustered_kernel(self):
        from keras import ops

        return ops.take(self.centroids, self.index) * self.sparsity_mask

    def call(self, inputs, training=None):
        with keras.StatelessScope(state_mapping=[(self.layer.kernel, self.clustered_kernel())]):
            return self.layer(inputs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def tfcompress_effective_weights(self):
        weights = [keras.ops.convert_to_numpy(self.clustered_kernel())]
        if getattr(self.layer, "use_bias", False):
            weights.append(keras.ops.convert_to_numpy(self.layer.bias))
        return weights

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_clusters": self.n_clusters, "init": self.init,
                "preserve_sparsity": self.preserve_sparsity}


def cluster(model, n_clusters: int = 16, *, init: str = "linear", preserve_sparsity: bool = True,
            layers=None) -> keras.Model:
    """A copy of ``model`` with the kernels of Dense / Conv2D / DepthwiseConv2D clustered.

    ``layers``: None (all clusterable layers), a list of names, or a function layer -> bool.
    """
    if not isinstance(model, keras.Model) or type(model).__name__ not in ("Functional", "Sequential"):
        raise TfcompressError("cluster needs a Sequential or Functional model", getattr(model, "name", "model"),
                              "build the model with keras.Input")
    if init not in ("linear", "density", "kmeans++"):
        raise TfcompressError(f"unknown init {init!r}", "cluster", "use 'linear', 'density' or 'kmeans++'")

    def chosen(layer) -> bool:
        if not isinstance(layer, CLUSTERABLE) or isinstance(layer, keras.layers.SeparableConv2D):
            return False
        if layers is None:
            return True
        return layers(layer) if callable(layers) else layer.name in layers

    pairs = []

    def wrap(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        new = ClusterWeights(fresh, n_clusters, init, preserve_sparsity, name=f"cluster_{layer.name}") \
            if chosen(layer) else fresh
        pairs.append((layer, new))
        return new

    clustered = keras.models.clone_model(model, clone_function=wrap)
    for source, target in pairs:
        if isinstance(target, ClusterWeights):
            target.layer.set_weights(source.get_weights())
            target.initialize_clusters()
        elif source.weights:
            target.set_weights(source.get_weights())
    return clustered


def strip_clustering(model) -> keras.Model:
    """A plain model whose kernels hold the clustered values (tfmot's strip_clustering)."""
    pairs = []

    def unwrap(layer):
        new = layer.layer.__class__.from_config(layer.layer.get_config()) if isinstance(layer, ClusterWeights) \
            else layer.__class__.from_config(layer.get_config())
        pairs.append((layer, new))
        return new

    plain = keras.models.clone_model(model, clone_function=unwrap)
    for source, target in pairs:
        if isinstance(source, ClusterWeights):
            target.set_weights(source.tfcompress_effective_weights())
        elif source.weights:
            target.set_weights(source.get_weights())
    return plain


def huffman_code_lengths(frequencies: dict[Any, int]) -> dict[Any, int]:
    """Code length of every symbol in an optimal prefix code (Huffman 1952)."""
    symbols = [s for s, f in frequencies.items() if f > 0]
    if len(symbols) == 1:
        return {symbols[0]: 1}
    heap = [(frequencies[s], i, [s]) for i, s in enumerate(symbols)]
    heapq.heapify(heap)
    lengths = dict.fromkeys(symbols, 0)
    counter = len(heap)
    while len(heap) > 1:
        f1, _, s1 = heapq.heappop(heap)
        f2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (f1 + f2, counter, s1 + s2))
        counter += 1
    return lengths


def huffman_bits(symbols) -> int:
    counts = Counter(symbols)
    if not counts:
        return 0
    lengths = huffman_code_lengths(counts)
    return sum(counts[s] * lengths[s] for s in counts)


@dataclass
class DeepCompressionSize:
    layers: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(v["bytes"] for v in self.layers.values())

    def text(self) -> str:
        lines = [f"{'layer':24s} {'non-zeros':>10s} {'clusters':>8s} {'bytes':>10s}"]
        lines += [f"{name:24s} {v['nonzero']:10,d} {v['clusters']:8d} {v['bytes']:10,d}" for name, v in self.layers.items()]
        lines.append(f"{'total':24s} {'':10s} {'':8s} {self.total_bytes:10,d}")
        return "\n".join(lines)


def deep_compression_size(model, index_bits: dict[str, int] | None = None) -> DeepCompressionSize:
    """Estimated storage of pruning + weight sharing + Huffman coding (Han et al. 2016)."""
    bits_for = {"conv": 8, "dense": 5, **(index_bits or {})}
    result = DeepCompressionSize()
    for layer in getattr(model, "layers", []):
        inner = layer.layer if isinstance(layer, ClusterWeights) else layer
        if not isinstance(inner, CLUSTERABLE):
            count = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
            if count:
                result.layers[layer.name] = {"nonzero": count, "clusters": 0, "bytes": 4 * count}
            continue
        if isinstance(layer, ClusterWeights):
            kernel = keras.ops.convert_to_numpy(layer.clustered_kernel())
            index = keras.ops.convert_to_numpy(layer.index)
        else:
            kernel = keras.ops.convert_to_numpy(inner.kernel)
            _, values = np.unique(kernel, return_inverse=True)
            index = values.reshape(kernel.shape)
        flat, codes = kernel.reshape(-1), index.reshape(-1)
        positions = np.flatnonzero(flat)
        b = bits_for["dense" if isinstance(inner, keras.layers.Dense) else "conv"]
        limit = (1 << b) - 1
        gaps, symbols, previous = [], [], -1
        for p in positions:
            gap = p - previous
            while gap > limit:  # a filler entry (a stored zero) bridges a long gap
                gaps.append(limit)
                symbols.append(-1)
                gap -= limit
            gaps.append(gap)
            symbols.append(int(codes[p]))
            previous = p
        clusters = len(np.unique(flat[positions])) if positions.size else 0
        bias = 4 * int(inner.bias.shape[0]) if getattr(inner, "use_bias", False) else 0
        total_bits = huffman_bits(symbols) + huffman_bits(gaps) + 32 * clusters
        result.layers[layer.name] = {"nonzero": int(positions.size), "clusters": clusters,
                                     "bytes": math.ceil(total_bits / 8) + bias}
    return result

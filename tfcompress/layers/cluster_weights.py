"""`ClusterWeights`: a layer whose kernel is shared weights, ``centroids[index] * mask``.

Han, Mao and Dally, ICLR 2016, "Deep Compression", sec. 3; names as tfmot's
``cluster_weights``. The 1-D k-means that assigns the weights (:func:`kmeans_1d`) is here too;
``tfcompress.quantization.clustering`` wraps models (``cluster``, ``strip_clustering``) and
estimates the Deep Compression size.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfcompress.core import WrapperHandler, register_layer
from tfcompress.errors import TfcompressError

CLUSTERABLE = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
INITS = ("linear", "kmeans++", "density")


def _check_init(init: str, where: str) -> None:
    if init not in INITS:
        raise TfcompressError(f"unknown init {init!r}", where,
                              "use init='linear', 'kmeans++' or 'density'")


def _initial_centroids(values: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    """Sorted initial centroids (Han et al. 2016, sec. 3.2; Arthur and Vassilvitskii 2007)."""
    if init == "linear":  # linearly spaced between min and max
        return np.linspace(values.min(), values.max(), k)
    if init == "density":  # linearly spaced on the CDF
        return np.quantile(values, (np.arange(k) + 0.5) / k)
    rng = np.random.default_rng(seed)  # k-means++: D^2 sampling
    centroids = [values[rng.integers(values.size)]]
    d2 = (values - centroids[0]) ** 2
    for _ in range(1, k):
        total = d2.sum()
        chosen = values[rng.choice(values.size, p=d2 / total)] if total > 0 else values[0]
        centroids.append(chosen)
        d2 = np.minimum(d2, (values - chosen) ** 2)
    return np.sort(np.asarray(centroids))


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", iterations: int = 100,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm on scalars (Han et al. 2016, eq. 1): ``(centroids, assignment)``.

    Minimises ``sum_i sum_{w in c_i} |w - c_i|^2``. Centroids are sorted (1-D Lloyd keeps the
    order of a sorted initialisation); ``k`` is lowered to the number of distinct values. A
    weight goes to its nearest centroid (the lower one on a tie); an empty cluster keeps its
    centroid. Stops when the assignment no longer changes or after ``iterations`` updates.

    Example:
        >>> centroids, assignment = kmeans_1d(np.array([0.1, 0.2, 0.9, 1.0, 1.1]), k=2)
        >>> np.round(centroids, 3).tolist(), assignment.tolist()
        ([0.15, 1.0], [0, 0, 1, 1, 1])
    """
    _check_init(init, "kmeans_1d")
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size == 0:
        return np.zeros(0), np.zeros(0, np.int32)
    k = min(int(k), np.unique(values).size)
    if k < 1:
        raise TfcompressError(f"k must be >= 1, got {k}", "kmeans_1d")
    centroids = _initial_centroids(values, k, init, seed)
    assignment = None
    for _ in range(max(1, int(iterations))):
        # nearest of sorted centroids = position among the midpoints
        new = np.searchsorted((centroids[:-1] + centroids[1:]) / 2, values, side="left")
        new = new.astype(np.int32)
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        counts = np.bincount(assignment, minlength=k)
        sums = np.bincount(assignment, weights=values, minlength=k)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    return centroids, assignment


@keras.saving.register_keras_serializable(package="tfcompress")
class ClusterWeights(keras.layers.Wrapper):
    """Wraps a Dense / Conv2D / DepthwiseConv2D so its kernel is ``centroids[index] * mask``
    (Han et al., ICLR 2016, sec. 3; tfmot's ``ClusterWeights``).

    ``centroids`` (n_clusters, trainable) receive the summed gradients of their members
    (eq. 3); ``index`` (int32, the kernel's shape) and ``sparsity_mask`` (0 where a pruned
    kernel had a zero, with ``preserve_sparsity``) are fixed. The clusters are computed from the
    inner layer's kernel at build and again by :meth:`initialize_clusters`.

    Args:
        layer: the layer to cluster.
        n_clusters: number of centroids (>= 2).
        init: ``"linear"``, ``"kmeans++"`` or ``"density"``.
        preserve_sparsity: keep the exact zeros of the kernel at 0.

    Example:
        >>> layer = ClusterWeights(keras.layers.Dense(4), n_clusters=3)
        >>> model = keras.Sequential([keras.Input((8,)), layer])
        >>> kernel = keras.ops.convert_to_numpy(layer.tfcompress_effective_weights()[0])
        >>> kernel.shape, len(np.unique(kernel)), tuple(layer.centroids.shape)
        ((8, 4), 3, (3,))
    """

    tfcompress_clustered = True

    def __init__(self, layer, n_clusters: int = 16, init: str = "linear",
                 preserve_sparsity: bool = True, **kwargs):
        super().__init__(layer, **kwargs)
        if not isinstance(layer, CLUSTERABLE):
            raise TfcompressError(f"cannot cluster a {type(layer).__name__}", layer.name,
                                  "cluster Dense, Conv2D or DepthwiseConv2D layers")
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) \
                or n_clusters < 2:
            raise TfcompressError(f"n_clusters must be an integer >= 2, got {n_clusters!r}",
                                  layer.name, "pass e.g. n_clusters=16")
        _check_init(init, layer.name)
        self.n_clusters, self.init = int(n_clusters), init
        self.preserve_sparsity = bool(preserve_sparsity)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernel = self.layer.kernel
        shape = tuple(kernel.shape)
        self.centroids = self.add_weight(name="centroids", shape=(self.n_clusters,),
                                         initializer="zeros")
        self.index = self.add_weight(name="index", shape=shape, initializer="zeros",
                                     dtype="int32", trainable=False)
        self.sparsity_mask = self.add_weight(name="sparsity_mask", shape=shape,
                                             initializer="ones", trainable=False)
        kernel.trainable = False  # the centroids are what is trained
        self.built = True
        import tensorflow as tf

        if tf.executing_eagerly():
            self.initialize_clusters()

    def initialize_clusters(self) -> None:
        """k-means on the inner layer's current kernel: sets centroids, index and mask."""
        kernel = keras.ops.convert_to_numpy(self.layer.kernel)
        mask = (kernel != 0) if self.preserve_sparsity else np.ones(kernel.shape, bool)
        centroids, assignment = kmeans_1d(kernel[mask], self.n_clusters, self.init)
        full = np.zeros(self.n_clusters, np.float32)
        full[: centroids.size] = centroids
        index = np.zeros(kernel.shape, np.int32)
        index[mask] = assignment
        self.centroids.assign(full)
        self.index.assign(index)
        self.sparsity_mask.assign(mask.astype(np.float32))

    def clustered_kernel(self):
        """``W = C[I] * mask`` (eq. 3's forward pass)."""
        return keras.ops.take(self.centroids, self.index) * self.sparsity_mask

    def call(self, inputs, training=None):
        mapping = [(self.layer.kernel, self.clustered_kernel())]
        with keras.StatelessScope(state_mapping=mapping):
            return self.layer(inputs, training=training)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def tfcompress_effective_weights(self) -> list[np.ndarray]:
        weights = [keras.ops.convert_to_numpy(self.clustered_kernel())]
        if getattr(self.layer, "bias", None) is not None:
            weights.append(keras.ops.convert_to_numpy(self.layer.bias))
        return weights

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_clusters": self.n_clusters, "init": self.init,
                "preserve_sparsity": self.preserve_sparsity}


# channels flow through a clustering wrapper as through the layer it wraps
register_layer(ClusterWeights, WrapperHandler(why="strip clustering first (tfcompress.strip_clustering)"))

"""Weight clustering: k-means vs NumPy Lloyd, centroid gradients, sparsity, Huffman, export."""

from __future__ import annotations

import math
from collections import Counter

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import synthetic_images
from layer_harness import assert_keras_roundtrip

from tfcompress.clustering import (
    ClusterWeights,
    cluster,
    deep_compression_size,
    huffman_code_lengths,
    kmeans_1d,
    strip_clustering,
)
from tfcompress.errors import TfcompressError
from tfcompress.export.convert import to_tflite
from tfcompress.export.tflite_file import load_tflite


def test_kmeans_is_a_fixed_point_of_lloyd():
    values = np.random.default_rng(0).normal(size=2000)
    centroids, assignment = kmeans_1d(values, 8, "linear", iterations=200)
    # independent check: every point is nearest to its centroid, every centroid is its members' mean
    nearest = np.argmin(np.abs(values[:, None] - centroids[None]), axis=1)
    np.testing.assert_array_equal(nearest, assignment)
    for c in range(8):
        assert centroids[c] == pytest.approx(values[assignment == c].mean())
    for init in ("density", "kmeans++"):
        assert kmeans_1d(values, 8, init)[0].size == 8


def small(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
                             keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(10, name="fc")])


def test_centroid_gradient_is_the_sum_of_member_gradients():
    model = cluster(small(), n_clusters=4)
    layer = model.get_layer("cluster_fc")
    x = np.random.default_rng(0).random((4, 16, 16, 1)).astype("float32")
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(model(x) ** 2)
    grad_centroids = tape.gradient(out, layer.centroids.value).numpy()
    plain = strip_clustering(model)  # same effective kernel, as a variable
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(plain(x) ** 2)
    grad_kernel = tape.gradient(out, plain.get_layer("fc").kernel.value).numpy()
    index = layer.index.numpy()
    expected = np.array([grad_kernel[index == c].sum() for c in range(4)])
    np.testing.assert_allclose(grad_centroids, expected, rtol=1e-4, atol=1e-6)


def test_fine_tuning_keeps_clusters_and_zeros_and_exports(tmp_path):
    x, y = synthetic_images(320, shape=(16, 16, 1), seed=5)
    base = small()
    weights = base.get_layer("fc").get_weights()
    weights[0][np.abs(weights[0]) < np.quantile(np.abs(weights[0]), 0.7)] = 0  # a pruned kernel
    base.get_layer("fc").set_weights(weights)
    zeros = int((weights[0] == 0).sum())
    model = cluster(base, n_clusters=8)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, verbose=0)
    plain = strip_clustering(model)
    assert not any(isinstance(layer, ClusterWeights) for layer in plain.layers)
    kernel = plain.get_layer("fc").kernel.numpy()
    assert int((kernel == 0).sum()) == zeros  # sparsity preserved through training
    assert len(np.unique(kernel[kernel != 0])) <= 8
    np.testing.assert_allclose(plain.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0), atol=1e-5)
    assert_keras_roundtrip(model, x[:8], tmp_path, atol=1e-6, name="c")
    to_tflite(plain, tmp_path / "c.tflite", "int8", representative_data=x[:64])
    parsed = load_tflite(tmp_path / "c.tflite")
    fc = next(t for t in parsed.tensors[0] if t.constant and t.dtype == "INT8" and t.shape == (10, 392))
    values = parsed.constant_values(fc)
    for row in values:  # per output channel: at most the 8 centroids and 0
        assert len(np.unique(row)) <= 9
    # zeros in the int8 file, position by position (TFLite stores the Dense kernel (out, in)):
    # every pruned weight, plus any centroid below half a step of its channel's int8 scale
    int8_zeros = values.T == 0
    pruned = weights[0] == 0
    assert np.all(int8_zeros[pruned])
    scale = np.abs(kernel).max(axis=0) / 127.0  # per-channel symmetric narrow range, as the converter
    np.testing.assert_array_equal(int8_zeros, np.round(kernel / scale) == 0)
    rounding = int((int8_zeros & ~pruned).sum())
    assert rounding == 0, f"{rounding} clustered weights round to 0"  # here: exactly the pruned zeros


def test_huffman_code_lengths_and_entropy_bound():
    assert huffman_code_lengths({"a": 5, "b": 2, "c": 1, "d": 1}) == {"a": 1, "b": 2, "c": 3, "d": 3}
    symbols = np.random.default_rng(1).choice(6, size=5000, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    counts = Counter(symbols.tolist())
    lengths = huffman_code_lengths(counts)
    n = sum(counts.values())
    average = sum(counts[s] * lengths[s] for s in counts) / n
    entropy = -sum(c / n * math.log2(c / n) for c in counts.values())
    assert entropy <= average < entropy + 1
    assert sum(2.0 ** -length for length in lengths.values()) <= 1.0  # Kraft


def test_deep_compression_size_counts_a_known_layer():
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2, use_bias=False, name="fc")(inp))
    model.get_layer("fc").set_weights([np.array([[0.5, 0], [0, 0.5], [-0.5, 0], [0, 0.5]], "float32")])
    size = deep_compression_size(model).layers["fc"]
    # non-zeros at flat positions 0, 3, 4, 7: gaps 1, 3, 1, 3 -> Huffman 1 bit each = 4 bits;
    # cluster symbols {0.5: 3, -0.5: 1} -> 1 bit each = 4 bits; codebook 2 x 32 bits
    assert (size.nonzero, size.clusters, size.layout, size.values) == (4, 2, "sparse", "codebook")
    assert (size.position_bits, size.index_bits, size.codebook_bits) == (4, 4, 64)
    assert size.bytes == math.ceil((4 + 4 + 64) / 8)
    # the dense layout would cost more: symbols {0: 4, 0.5: 3, -0.5: 1} -> Huffman 1, 2, 2 bits
    assert 4 * 1 + 3 * 2 + 1 * 2 + 64 > 4 + 4 + 64
    assert deep_compression_size(cluster(small(), 4)).total_bytes < 4 * small().count_params()


def test_bad_input():
    with pytest.raises(TfcompressError, match="init"):
        cluster(small(), 4, init="random")
    with pytest.raises(TfcompressError, match="n_clusters"):
        ClusterWeights(keras.layers.Dense(2), n_clusters=1)

"""Weight clustering (weight sharing) and the Deep Compression size estimate.

Han, Mao and Dally, ICLR 2016, "Deep Compression: Compressing Deep Neural Networks with Pruning,
Trained Quantization and Huffman Coding".

``cluster(model, n_clusters)`` follows sec. 3 (names as tfmot's ``cluster_weights``:
``ClusterWeights``, ``strip_clustering``): the weights of each kernel are partitioned by 1-D
k-means (eq. 1, Lloyd's algorithm), initialised linearly between min and max (sec. 3.2, the
paper's best), on the CDF ("density") or by k-means++; every weight is replaced by its
centroid, ``W = C[I]``, and fine-tuning trains the centroids: the gradient of a centroid is
the sum of the gradients of the weights in its cluster (eq. 3,
``dL/dC_k = sum_ij dL/dW_ij 1(I_ij = k)``), which ``gather`` gives. The assignment ``I`` is
fixed after clustering, as in the paper. With ``preserve_sparsity`` the zeros of a pruned
kernel are left out of the k-means and held at exactly 0 by a fixed mask (tfmot's
sparsity-preserving clustering), so a pruned model stays as sparse.

``deep_compression_size`` estimates the paper's storage (sec. 2-4): the non-zero weights in a
sparse format with relative indices (sec. 2, Fig. 2: a gap is stored in ``b`` bits, 8 for
convolutions and 5 for dense layers, and a filler zero is inserted where a gap exceeds
``2**b``), the cluster indices and the relative indices Huffman-coded from their histograms
(sec. 4), and a codebook of 32-bit centroids per layer (sec. 3.3); biases and other
parameters stay float32. For each layer the cheaper of the sparse and the dense layout, and of
a codebook and raw values, is counted.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tfcompress.core import copy_layer, iter_layers, rebuild, trace
from tfcompress.errors import TfcompressError
from tfcompress.layers.cluster_weights import (
    CLUSTERABLE,
    INITS,
    ClusterWeights,
    _check_init,
    kmeans_1d,
)

__all__ = [
    "CLUSTERABLE",
    "DEFAULT_INDEX_BITS",
    "INITS",
    "ClusterWeights",
    "DeepCompressionSize",
    "LayerSize",
    "cluster",
    "deep_compression_size",
    "huffman_bits",
    "huffman_code_lengths",
    "kernel_size",
    "kmeans_1d",
    "strip_clustering",
]

# the paper's relative-index widths (sec. 2): 8 bits for convolutions, 5 for dense layers
DEFAULT_INDEX_BITS = {"conv": 8, "dense": 5}


def _is_graph_model(model) -> bool:
    return isinstance(model, keras.Model) and type(model).__name__ in ("Functional", "Sequential")


def _leaf_layers(model) -> Iterable:
    return iter_layers(model, models=False)


def _clusterable(layer) -> bool:
    # hashed / binary / pruned layers compute their kernel from other weights: not plain kernels
    return type(layer) in CLUSTERABLE and not hasattr(layer, "tfcompress_effective_weights")


def cluster(model: keras.Model, n_clusters: int = 16, *, init: str = "linear",
            preserve_sparsity: bool = True,
            layers: Iterable[str] | Callable[[Any], bool] | None = None) -> keras.Model:
    """A copy of ``model`` whose Dense / Conv2D / DepthwiseConv2D kernels are clustered into
    ``n_clusters`` trainable centroids (Han et al., ICLR 2016, sec. 3; tfmot's
    ``cluster_weights``). Compile and fine-tune it, then :func:`strip_clustering`.

    Args:
        model: a Sequential or Functional model (nested ones are walked).
        n_clusters: centroids per layer (>= 2).
        init: centroid initialisation, ``"linear"`` (the paper's), ``"kmeans++"`` or
            ``"density"``.
        preserve_sparsity: exact zeros (a pruned, stripped model) stay exactly 0.
        layers: None (every clusterable layer), layer names, or a function layer -> bool.

    Example:
        >>> keras.utils.set_random_seed(0)
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
        >>> clustered = cluster(model, n_clusters=4)
        >>> type(clustered.layers[0]).__name__
        'ClusterWeights'
        >>> clustered.compile("adam", "mse")
        >>> _ = clustered.fit(np.ones((8, 8)), np.zeros((8, 4)), epochs=1, verbose=0)   # fine-tune the centroids
        >>> plain = strip_clustering(clustered)
        >>> len(np.unique(plain.get_layer("fc").kernel.numpy())) <= 4
        True
    """
    if not _is_graph_model(model):
        raise TfcompressError(f"cluster needs a Sequential or Functional model, got "
                              f"{type(model).__name__}", getattr(model, "name", "model"),
                              "build the model as keras.Sequential or with keras.Input")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) \
            or n_clusters < 2:
        raise TfcompressError(f"n_clusters must be an integer >= 2, got {n_clusters!r}",
                              "cluster", "pass e.g. n_clusters=16")
    _check_init(init, "cluster")
    leaves = list(_leaf_layers(model))
    names: set[str] | None = None
    if layers is not None and not callable(layers):
        names = {layers} if isinstance(layers, str) else set(layers)
        known = {layer.name for layer in leaves}
        if names - known:
            raise TfcompressError(f"no layer named {sorted(names - known)}", "cluster(layers=...)",
                                  f"choose among {sorted(known)}")
        bad = [layer.name for layer in leaves if layer.name in names and not _clusterable(layer)]
        if bad:
            raise TfcompressError(f"cannot cluster {bad}", "cluster(layers=...)",
                                  "name plain Dense, Conv2D or DepthwiseConv2D layers")

    def chosen(layer) -> bool:
        if not _clusterable(layer):
            return False
        if names is not None:
            return layer.name in names
        return True if layers is None else bool(layers(layer))

    for layer in leaves:
        if isinstance(layer, ClusterWeights):
            raise TfcompressError("the model is already clustered", layer.name,
                                  "call strip_clustering first, or cluster the original model")
        if isinstance(layer, keras.layers.Wrapper) and type(layer.layer) in CLUSTERABLE:
            raise TfcompressError(f"{type(layer).__name__} wraps this layer", layer.name,
                                  "strip the wrapper first (e.g. tfcompress.strip after pruning;"
                                  " preserve_sparsity keeps its zeros)")

    def wrap(node, args, kwargs):
        layer = node.op
        if not node.is_layer or not chosen(layer):
            return None
        fresh = copy_layer(layer)
        new = ClusterWeights(fresh, n_clusters, init, preserve_sparsity, name=f"cluster_{layer.name}")
        out = new(*args, **kwargs)
        fresh.set_weights(layer.get_weights())
        new.initialize_clusters()
        return out

    return rebuild(trace(model, where="cluster", inline=False), wrap, as_clone=True)


def strip_clustering(model: keras.Model) -> keras.Model:
    """A plain model whose kernels hold the clustered values (tfmot's ``strip_clustering``):
    at most ``n_clusters`` distinct values per kernel, plus the preserved zeros.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
        >>> plain = strip_clustering(cluster(model, n_clusters=3))
        >>> type(plain.layers[0]).__name__, len(np.unique(plain.get_layer("fc").kernel.numpy()))
        ('Dense', 3)
    """
    if not _is_graph_model(model):
        raise TfcompressError(f"strip_clustering needs a Sequential or Functional model, got "
                              f"{type(model).__name__}", getattr(model, "name", "model"))
    def unwrap(node, args, kwargs):
        layer = node.op
        if not isinstance(layer, ClusterWeights):
            return None
        new = copy_layer(layer.layer)
        out = new(*args, **kwargs)
        new.set_weights(layer.tfcompress_effective_weights())
        return out

    return rebuild(trace(model, where="strip_clustering", inline=False), unwrap, as_clone=True)


# ---------------------------------------------------------------- Huffman coding (sec. 4)

def huffman_code_lengths(frequencies: Mapping[Hashable, int]) -> dict[Hashable, int]:
    """Code length of every symbol of positive frequency in a Huffman code (Huffman 1952):
    repeatedly merge the two least frequent nodes; a symbol's length is its depth. A single
    symbol gets 1 bit.

    Example:
        >>> huffman_code_lengths({"a": 5, "b": 2, "c": 1, "d": 1})
        {'a': 1, 'b': 2, 'c': 3, 'd': 3}
    """
    symbols = [s for s, f in frequencies.items() if f > 0]
    if len(symbols) <= 1:
        return dict.fromkeys(symbols, 1)
    heap = [(int(frequencies[s]), i) for i, s in enumerate(symbols)]
    heapq.heapify(heap)
    parent: list[int] = [-1] * len(symbols)
    while len(heap) > 1:
        f1, a = heapq.heappop(heap)
        f2, b = heapq.heappop(heap)
        node = len(parent)
        parent.append(-1)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (f1 + f2, node))
    depth = [0] * len(parent)
    for node in range(len(parent) - 2, -1, -1):  # a parent is created after its children
        depth[node] = depth[parent[node]] + 1
    return {s: depth[i] for i, s in enumerate(symbols)}


def huffman_bits(counts: Mapping[Hashable, int]) -> int:
    """Total bits of a Huffman-coded stream with this histogram (symbol -> count).

    Example:
        >>> huffman_bits({"a": 5, "b": 2, "c": 1, "d": 1})     # 5 * 1 + 2 * 2 + 3 + 3
        15
    """
    lengths = huffman_code_lengths(counts)
    return sum(int(counts[s]) * n for s, n in lengths.items())


def _histogram(symbols: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(symbols, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


# ---------------------------------------------------------------- the size estimate

@dataclass
class LayerSize:
    """Deep Compression storage of one kernel (bits) and of the layer's other parameters.

    ``layout`` is ``"sparse"`` (relative indices, sec. 2) or ``"dense"``; ``values`` is
    ``"codebook"`` (Huffman-coded cluster indices + codebook) or ``"raw"`` (the values as
    stored, used when that is smaller, e.g. an unclustered float kernel).

    Example:
        >>> size = kernel_size("fc", np.array([[0, 1], [2, 1]]), "dense", gap_bits=5, raw_bits=32)
        >>> size.nonzero, size.clusters, size.layout, size.values
        (3, 2, 'sparse', 'codebook')
        >>> size.bytes                  # a 2-value codebook (8 bytes) and a few bits of gaps and indices
        9
    """

    name: str
    kind: str
    params: int
    nonzero: int
    clusters: int
    layout: str
    values: str
    position_bits: int
    index_bits: int
    codebook_bits: int
    other_bytes: int

    @property
    def bytes(self) -> int:
        bits = self.position_bits + self.index_bits + self.codebook_bits
        return math.ceil(bits / 8) + self.other_bytes


@dataclass
class DeepCompressionSize:
    """Per-layer and total Deep Compression storage, next to the TFLite file's gzip size.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
        >>> size = deep_compression_size(strip_clustering(cluster(model, n_clusters=4)))
        >>> size.float32_bytes, size.total_bytes, round(size.compression_ratio, 2)
        (144, 40, 3.6)
        >>> print(size)   # idx bits: the Huffman-coded indices, 62-64 with the random weights' clusters
        layer                           params   nonzero clusters layout  pos bits  idx bits codebook  other B     bytes
        fc                                  32        32        4  dense         0       ...       16       16        40
        total                                                                                                       40
        Deep Compression estimate 40 bytes; float32 144 bytes (3.6x)
    """

    layers: dict[str, LayerSize] = field(default_factory=dict)
    float32_bytes: int = 0
    tflite_bytes: int | None = None
    gzip_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(layer.bytes for layer in self.layers.values())

    @property
    def compression_ratio(self) -> float:
        """float32 storage / Deep Compression storage."""
        return self.float32_bytes / max(self.total_bytes, 1)

    def text(self) -> str:
        head = (f"{'layer':28s} {'params':>9s} {'nonzero':>9s} {'clusters':>8s} {'layout':>6s} "
                f"{'pos bits':>9s} {'idx bits':>9s} {'codebook':>8s} {'other B':>8s} "
                f"{'bytes':>9s}")
        lines = [head]
        for v in self.layers.values():
            lines.append(
                f"{v.name[-28:]:28s} {v.params:9,d} {v.nonzero:9,d} {v.clusters:8d} "
                f"{v.layout:>6s} {v.position_bits:9,d} {v.index_bits:9,d} "
                f"{v.codebook_bits // 8:8,d} {v.other_bytes:8,d} {v.bytes:9,d}")
        lines.append(f"{'total':28s} {'':>81s} {self.total_bytes:9,d}")
        lines.append(f"Deep Compression estimate {self.total_bytes:,d} bytes; float32 "
                     f"{self.float32_bytes:,d} bytes ({self.compression_ratio:.1f}x)")
        if self.gzip_bytes is not None:
            lines.append(f"TFLite file {self.tflite_bytes:,d} bytes, gzip {self.gzip_bytes:,d} "
                         "bytes")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def _resolve_index_bits(index_bits: int | Mapping[str, int] | None) -> dict[str, int]:
    if index_bits is None:
        bits = dict(DEFAULT_INDEX_BITS)
    elif isinstance(index_bits, Mapping):
        bits = {**DEFAULT_INDEX_BITS, **index_bits}
    else:
        bits = dict.fromkeys(DEFAULT_INDEX_BITS, index_bits)
    for kind, b in bits.items():
        if kind not in DEFAULT_INDEX_BITS or isinstance(b, bool) or not isinstance(
                b, (int, np.integer)) or not 1 <= b <= 32:
            raise TfcompressError(f"bad index_bits entry {kind!r}: {b!r}", "deep_compression_size",
                                  "pass an integer in [1, 32] or {'conv': 8, 'dense': 5}")
    return bits


def kernel_size(name: str, symbols: np.ndarray, kind: str, gap_bits: int, raw_bits: int,
                codebook_bits: int | None = None, other_bytes: int = 0) -> LayerSize:
    """Deep Compression storage of one kernel whose entries are ``symbols`` (0 = pruned).

    Sparse layout (sec. 2): each non-zero is stored with its gap to the previous one in
    ``gap_bits`` bits; a gap larger than ``2**gap_bits`` takes filler zero entries. The gaps
    and the cluster indices are Huffman-coded (sec. 4). ``codebook_bits``: the codebook's cost,
    by default 32 bits per distinct non-zero value (sec. 3.3). ``raw_bits``: bits per stored
    value without a codebook.

    Example:
        >>> symbols = np.array([0, 0, 1, 0, 2, 2, 0, 1])        # cluster indices, 0 = pruned
        >>> size = kernel_size("fc", symbols, "dense", gap_bits=5, raw_bits=32)
        >>> size.params, size.nonzero, size.clusters, size.codebook_bits        # 2 values at 32 bits
        (8, 4, 2, 64)
        >>> size.layout, size.bytes
        ('sparse', 10)
    """
    flat = np.asarray(symbols).reshape(-1)
    positions = np.flatnonzero(flat)
    distinct = np.unique(flat[positions])
    codebook = 32 * distinct.size if codebook_bits is None else int(codebook_bits)

    # sparse: a gap g becomes (g - 1) // limit fillers of gap `limit` and a remainder
    limit = 1 << gap_bits
    gaps = np.diff(positions, prepend=-1)
    fillers = (gaps - 1) // limit
    remainders = gaps - fillers * limit
    n_fill = int(fillers.sum())
    gap_counts = _histogram(remainders)
    if n_fill:
        gap_counts[limit] = gap_counts.get(limit, 0) + n_fill
    _, codes = np.unique(flat[positions], return_inverse=True)
    code_counts = _histogram(codes)
    if n_fill:
        code_counts[-1] = n_fill  # a filler stores a zero
    entries = positions.size + n_fill

    def cheaper(counts: dict, n: int) -> tuple[str, int, int]:
        """(values, index bits, codebook bits): Huffman codes + codebook, or raw values."""
        if codebook >= raw_bits * n:  # the codebook alone costs more than raw values
            return "raw", raw_bits * n, 0
        coded = huffman_bits(counts)
        if coded + codebook < raw_bits * n:
            return "codebook", coded, codebook
        return "raw", raw_bits * n, 0

    sparse = ("sparse", huffman_bits(gap_counts) if entries else 0,
              *cheaper(code_counts, entries))
    dense_counts = _histogram(np.unique(flat, return_inverse=True)[1]) if flat.size else {}
    dense = ("dense", 0, *cheaper(dense_counts, flat.size))  # zero is one more symbol
    layout, pos_bits, values, index_bits, book = min(
        (sparse, dense), key=lambda option: option[1] + option[3] + option[4])
    return LayerSize(name=name, kind=kind, params=int(flat.size), nonzero=int(positions.size),
                     clusters=int(distinct.size), layout=layout, values=values,
                     position_bits=int(pos_bits), index_bits=int(index_bits),
                     codebook_bits=int(book), other_bytes=int(other_bytes))


def _keras_sizes(model, bits: dict[str, int], result: DeepCompressionSize) -> None:
    for layer in _leaf_layers(model):
        inner = layer.layer if isinstance(layer, keras.layers.Wrapper) else layer
        if hasattr(layer, "tfcompress_effective_weights"):
            arrays = [np.asarray(a) for a in layer.tfcompress_effective_weights()]
        else:
            arrays = [np.asarray(keras.ops.convert_to_numpy(w)) for w in layer.weights]
        if not arrays:
            continue
        result.float32_bytes += 4 * sum(int(a.size) for a in arrays)
        if isinstance(inner, CLUSTERABLE) and (hasattr(layer, "tfcompress_effective_weights")
                                               or _clusterable(layer)):
            kernel, rest = arrays[0], arrays[1:]
            kind = "dense" if isinstance(inner, keras.layers.Dense) else "conv"
            other = 4 * sum(int(a.size) for a in rest)
            result.layers[layer.name] = kernel_size(layer.name, kernel, kind, bits[kind], 32,
                                                    other_bytes=other)
        else:
            count = sum(int(a.size) for a in arrays)
            result.layers[layer.name] = LayerSize(layer.name, "other", count,
                                                  sum(int(np.count_nonzero(a)) for a in arrays),
                                                  0, "dense", "raw", 0, 0, 0, 4 * count)


_WEIGHT_OPS = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "conv", "FULLY_CONNECTED": "dense"}


def _tflite_sizes(parsed, bits: dict[str, int], result: DeepCompressionSize) -> None:
    tensors = parsed.tensors[0]
    producer = {out: op for op in parsed.ops if op.subgraph == 0 for out in op.outputs}
    used: set[int] = set()
    for op in parsed.ops:
        kind = _WEIGHT_OPS.get(op.name)
        if kind is None or op.subgraph != 0 or len(op.inputs) < 2:
            continue
        weight = tensors[op.inputs[1]]
        if not weight.constant and op.inputs[1] in producer \
                and producer[op.inputs[1]].name == "DEQUANTIZE":
            weight = tensors[producer[op.inputs[1]].inputs[0]]  # float16 / dynamic-range weights
        values = parsed.constant_values(weight) if weight.constant else None
        if values is None or weight.index in used:
            continue
        used.add(weight.index)
        other = 0
        if len(op.inputs) > 2 and op.inputs[2] >= 0 and tensors[op.inputs[2]].constant:
            bias = tensors[op.inputs[2]]
            if bias.index not in used:
                used.add(bias.index)
                other = bias.nbytes
        raw_bits = 8 * values.dtype.itemsize
        codebook = None
        if weight.quantization is not None and values.dtype.kind in "iu":
            # integers are their own codes; the per-channel scales are the codebook
            codebook = 32 * len(weight.quantization.scales)
        result.float32_bytes += 4 * int(values.size) + other
        result.layers[weight.name] = kernel_size(weight.name, values, kind, bits[kind], raw_bits,
                                                 codebook, other)
    rest = [t for t in tensors if t.constant and t.index not in used and t.nbytes]
    if rest:
        nbytes = sum(t.nbytes for t in rest)
        count = sum(int(np.prod(t.shape)) for t in rest)
        result.float32_bytes += nbytes
        result.layers["(other constants)"] = LayerSize("(other constants)", "other", count, count,
                                                       0, "dense", "raw", 0, 0, 0, nbytes)


def deep_compression_size(source: keras.Model | str | os.PathLike,
                          index_bits: int | Mapping[str, int] | None = None, *,
                          tflite: str | os.PathLike | None = None) -> DeepCompressionSize:
    """Estimated storage of pruning + trained quantization + Huffman coding (Han et al.,
    ICLR 2016, sec. 2-4), per layer and in total, next to the gzip size of a TFLite file.

    Args:
        source: a Keras model (clustered or not: ``ClusterWeights`` and pruning wrappers count
            their effective kernels), a ``.keras`` file, or a ``.tflite`` file (its CONV_2D /
            DEPTHWISE_CONV_2D / FULLY_CONNECTED weights; int8 values are their own codes and
            the per-channel scales the codebook).
        index_bits: bits of a relative index; None for the paper's 8 (conv) / 5 (dense), an
            int for every layer, or ``{"conv": b, "dense": b}``.
        tflite: a ``.tflite`` file whose size and gzip size are reported alongside (defaults
            to ``source`` when that is a ``.tflite`` file).
    Returns:
        :class:`DeepCompressionSize`: ``.layers`` (name -> :class:`LayerSize`),
        ``.total_bytes``, ``.float32_bytes``, ``.gzip_bytes``; ``print`` it for a table.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
        >>> dense = deep_compression_size(model)
        >>> shared = deep_compression_size(strip_clustering(cluster(model, n_clusters=4)))
        >>> dense.float32_bytes, shared.total_bytes < dense.total_bytes
        (144, True)
        >>> sorted(shared.layers)
        ['fc']
    """
    from tfcompress.export.tflite_file import load_tflite

    bits = _resolve_index_bits(index_bits)
    result = DeepCompressionSize()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".tflite":
            parsed = load_tflite(path)
            _tflite_sizes(parsed, bits, result)
            tflite = path if tflite is None else tflite
        elif path.suffix == ".keras":
            from tfcompress.export.convert import load_keras_model

            _keras_sizes(load_keras_model(path), bits, result)
        else:
            raise TfcompressError("not a .keras or .tflite file", str(path),
                                  "pass a Keras model, a .keras file or a .tflite file")
    elif isinstance(source, keras.Model):
        _keras_sizes(source, bits, result)
    else:
        raise TfcompressError(f"cannot size a {type(source).__name__}", "deep_compression_size",
                              "pass a Keras model, a .keras file or a .tflite file")
    if tflite is not None:
        parsed = load_tflite(tflite)
        result.tflite_bytes, result.gzip_bytes = parsed.size_bytes, parsed.gzip_size_bytes
    return result

"""Storage of a sparse posterior ensemble, counted the seed's ways and as the file holds it.

Vadera et al. (2021), section 3.1: S members with N non-zero weights each cost ``3NS`` numbers
in coordinate (COO) format when each member is sparsified on its own (a row index, a column
index and a value per weight), but ``2N + NS`` when every member is sampled inside one fixed
sparse structure (the indices are stored once). When the shared structure is channel-level and
the pruned channels are removed (``tfcompress.shrink``), the members are small dense tensors and
need no index at all: ``NS``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from tfcompress.errors import TfcompressError

__all__ = ["StorageAccounting", "storage_accounting"]


@dataclass
class StorageAccounting:
    """Numbers stored for S members (``*_entries``), and the bytes a `.tflite` file holds.

    Attributes:
        members: S.
        params: weights per member (zeros included).
        nonzero: N, non-zero weights per member (the largest over members).
        shared_mask: whether every member has the same zero pattern (one structure).
        dense_entries: ``S * params``, each member stored dense.
        coo_entries: ``3 N S``, each member sparse in COO on its own.
        shared_entries: ``2 N + N S``, one index set for all members (only meaningful when
            ``shared_mask``).
        index_free_entries: ``N S`` when the members have no zeros left (a shrunk
            channel-level structure stores no index), else None.
        file_weight_bytes: constant-tensor bytes of the exported file, when ``path`` was given.

    Example:
        >>> import keras
        >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
        >>> report = storage_accounting(members)
        >>> report.members, report.params, report.dense_entries        # 2 members of 12 kernel weights
        (2, 12, 24)
    """

    members: int
    params: int
    nonzero: int
    shared_mask: bool
    dense_entries: int
    coo_entries: int
    shared_entries: int
    index_free_entries: int | None
    file_weight_bytes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _kernels(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.trainable_weights if len(w.shape) >= 2]


def storage_accounting(members, path: str | os.PathLike | None = None) -> StorageAccounting:
    """Count the storage of ``members`` (Keras models of one architecture) the seed's ways.

    Only kernels (weights of rank >= 2) are counted, as in the seed's weight matrices; biases
    and normalization parameters are small and stored dense in every format.

    Example:
        >>> import keras
        >>> members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
        >>> report = storage_accounting(members)
        >>> report.dense_entries, report.coo_entries, report.shared_entries, report.index_free_entries
        (24, 72, 48, 24)
    """
    members = list(members)
    if not members:
        raise TfcompressError("no member to account for", "members", "pass a list of models")
    kernels = [_kernels(m) for m in members]
    shapes = [[k.shape for k in ks] for ks in kernels]
    if any(s != shapes[0] for s in shapes):
        raise TfcompressError("the members do not share one architecture", "members",
                              "account members of one structure (same layers and shapes)")
    params = sum(k.size for k in kernels[0])
    nonzero = max(sum(int(np.count_nonzero(k)) for k in ks) for ks in kernels)
    masks = [[k != 0 for k in ks] for ks in kernels]
    shared = all(all(np.array_equal(a, b) for a, b in zip(m, masks[0], strict=True)) for m in masks)
    s = len(members)
    file_bytes = None
    if path is not None:
        from tfcompress.export import load_tflite

        file_bytes = load_tflite(path).weight_stats()["weight_bytes"]
    return StorageAccounting(
        members=s, params=params, nonzero=nonzero, shared_mask=shared,
        dense_entries=s * params, coo_entries=3 * nonzero * s, shared_entries=2 * nonzero + nonzero * s,
        index_free_entries=nonzero * s if nonzero == params else None, file_weight_bytes=file_bytes)

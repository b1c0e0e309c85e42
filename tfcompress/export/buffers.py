"""Constant buffers stored after the flatbuffer, addressed by ``Buffer.offset`` / ``Buffer.size``.

The TFLite schema lets a buffer hold its bytes outside the flatbuffer: when ``offset > 1``
they are ``size`` bytes at ``offset`` from the start of the file (a model past the 2 GiB a
flatbuffer can address needs this). ai-edge-quantizer writes every buffer of 1 KiB or more
this way as soon as they add up to 256 KiB (``model_modifier.py``: ``packed_size < 256 *
1024`` keeps them inside; no setting changes it). LiteRT reads such files; TFLite Micro reads
only the flatbuffer's own data vectors and runs with wrong weights (a 64-4096-10 int8 MLP
so stored: outputs off by up to 220 LSB from LiteRT's reference kernels, top-1 agreeing on 1
of 16 inputs; the same model with its buffers inside: 1 LSB, the FULLY_CONNECTED rounding
difference). `to_micro` refuses such files (`OffsetBuffersError`); `inline_buffers` rewrites
one with every buffer inside, 16-byte aligned.

Example:
    >>> from tfcompress.export.buffers import inline_buffers, load_tflite, offset_buffers
    >>> offset_buffers(load_tflite("quantized.tflite"))                # doctest: +SKIP
    [OffsetBuffer(index=3, offset=92160, size=262144, tensors=('dense/MatMul',))]
    >>> inline_buffers("quantized.tflite", "inline.tflite").external_buffers   # doctest: +SKIP
    {}
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tfcompress._io import write_bytes_atomic
from tfcompress.errors import InvalidModelFileError
from tfcompress.export.tflite_file import TFLiteModel, _schema, load_tflite

# What a flatbuffer can hold (signed 32-bit offsets), less room for the graph itself.
_FLATBUFFER_LIMIT = 2**31 - 2**26
BUFFER_ALIGNMENT = 16


@dataclass(frozen=True)
class OffsetBuffer:
    """One buffer stored after the flatbuffer and the tensors that read it.

    Example:
        >>> print(OffsetBuffer(index=3, offset=92160, size=262144, tensors=("dense/MatMul",)))
        buffer 3 (262,144 bytes at offset 92,160: dense/MatMul)
    """

    index: int
    offset: int
    size: int
    tensors: tuple[str, ...]

    def __str__(self) -> str:
        names = ", ".join(self.tensors) or "no tensor"
        return f"buffer {self.index} ({self.size:,} bytes at offset {self.offset:,}: {names})"


def offset_buffers(model: TFLiteModel) -> list[OffsetBuffer]:
    """The buffers of ``model`` stored after the flatbuffer, by buffer index.

    Example:
        >>> [b.size for b in offset_buffers(load_tflite("quantized.tflite"))]   # doctest: +SKIP
        [40960, 262144]

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=x)
        >>> offset_buffers(load_tflite("model.tflite"))      # the converter keeps every buffer inside
        []
    """
    readers: dict[int, list[str]] = {}
    for tensors in model.tensors:
        for t in tensors:
            if t.buffer in model.external_buffers:
                readers.setdefault(t.buffer, []).append(t.name)
    return [OffsetBuffer(index, offset, size, tuple(readers.get(index, ())))
            for index, (offset, size) in sorted(model.external_buffers.items())]


class _AlignedBuffer:
    """A ``BufferT`` stand-in whose data vector the builder aligns to 16 bytes."""

    def __init__(self, data: bytes | memoryview | None):
        self.data = data

    def Pack(self, builder) -> int:  # noqa: N802  (the object API's method name)
        schema = _schema()
        vector = None
        if self.data is not None:
            n = len(self.data)
            builder.StartVector(1, n, BUFFER_ALIGNMENT)
            builder.head -= n
            builder.Bytes[builder.head : builder.head + n] = self.data
            builder.vectorNumElems = n
            vector = builder.EndVector()
        schema.BufferStart(builder)
        if vector is not None:
            schema.BufferAddData(builder, vector)
        return schema.BufferEnd(builder)


def inline_buffers(source: str | os.PathLike | bytes, output: str | os.PathLike) -> TFLiteModel:
    """Rewrite a `.tflite` file with every buffer inside the flatbuffer (16-byte aligned).

    What TFLite Micro needs from a file that ai-edge-quantizer (or another writer) stored
    with buffers addressed by offset; the graph, tensors and values are unchanged. Returns
    the written file, validated by `load_tflite`.

    Raises:
        InvalidModelFileError: the source is not a valid `.tflite` file, or its buffers do
            not fit in one flatbuffer (2 GiB).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=x)
        >>> inlined = inline_buffers("model.tflite", "model_inline.tflite")
        >>> inlined.external_buffers, inlined.op_counts() == load_tflite("model.tflite").op_counts()
        ({}, True)
    """

    model = load_tflite(source)
    where = model.path or "<bytes>"
    total = sum(len(raw) for raw in model._buffers.values())
    if total > _FLATBUFFER_LIMIT:
        raise InvalidModelFileError(
            f"its buffers hold {total:,} bytes, more than one flatbuffer can address", where,
            "keep the buffers stored by offset and run the file on LiteRT (TFLite Micro cannot take it)",
        )
    tree = _schema().ModelT.InitFromPackedBuf(bytearray(model.data), 0)
    return write_model_tree(tree, [model._buffers.get(i) for i in range(len(tree.buffers or []))], output,
                            total + 1024)


def write_model_tree(tree, buffer_data: list, output: str | os.PathLike, size_hint: int) -> TFLiteModel:
    """Pack a schema ``ModelT`` with ``buffer_data`` as its buffers (16-byte aligned, inside the
    flatbuffer), write it atomically and return it validated by `load_tflite`."""
    import flatbuffers

    tree.buffers = [_AlignedBuffer(raw) for raw in buffer_data]
    builder = flatbuffers.Builder(size_hint)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    write_bytes_atomic(output, bytes(builder.Output()))
    return load_tflite(output)

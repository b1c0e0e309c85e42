"""Reading and validating `.tflite` flatbuffers without an interpreter.

A malformed file must be rejected here, before any C++ interpreter (LiteRT,
TFLite Micro, the Edge TPU compiler) sees it: those parse with few bounds
checks and a corrupted offset or a shape that lies can crash the process.
`load_tflite` runs two verifiers, then parses:

1. `tfcompress.export.flatbuffer.read_flatbuffer`: the checks flatbuffers' C++
   verifier makes (every table, vtable, offset, vector and string inside the
   file and aligned), plus limits on offsets aliasing the same data;
2. `tfcompress.export.verify.verify_model`: the semantic rules (indices, optional
   inputs, shapes, sizes, quantization, op codes, options, graph order, strings,
   work limits);

The first reads the model as it verifies it, into the object API's classes
(``schema_py_generated.ModelT``); constant data are views of the file's
bytes, never copies.

Example:
    >>> import keras, numpy as np
    >>> from tfcompress.export import to_tflite
    >>> from tfcompress.export.tflite_file import load_tflite
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
    ...                           keras.layers.Dense(2)])
    >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=np.ones((4, 8, 8, 1), "float32"))
    >>> load_tflite("model.tflite").op_counts()
    {'CONV_2D': 1, 'RESHAPE': 1, 'FULLY_CONNECTED': 1}
"""

from __future__ import annotations

import gzip
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

import numpy as np

from tfcompress.errors import InvalidModelFileError
from tfcompress.export.flatbuffer import read_flatbuffer
from tfcompress.export.verify import enum_names, verify_model

_FILE_IDENTIFIER = b"TFL3"
# A flatbuffer holding one empty subgraph is larger than this.
_MIN_SIZE = 24

# Ops that only move data between the float boundary and the int8 graph: with
# float32 model I/O a full-int8 model starts with QUANTIZE and ends with DEQUANTIZE.
BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"})
INTEGER_ACTIVATION_TYPES = frozenset({"INT8", "UINT8", "INT16"})

# Tensor types NumPy reads as they are stored (not INT4 / BFLOAT16 / STRING ...).
_NUMPY_TYPES = frozenset({
    "FLOAT32", "FLOAT16", "FLOAT64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
    "UINT64", "BOOL", "COMPLEX64", "COMPLEX128",
})


@cache
def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


@dataclass(frozen=True)
class QuantizationInfo:
    """Affine quantization of one tensor: ``real = scale * (q - zero_point)``."""

    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    quantized_dimension: int

    @property
    def per_channel(self) -> bool:
        return len(self.scales) > 1


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    buffer: int
    constant: bool
    nbytes: int
    quantization: QuantizationInfo | None
    sparse: bool = False

    @property
    def dynamic_dims(self) -> tuple[int, ...]:
        """Positions whose size is only known at run time (-1 in the signature)."""
        return tuple(i for i, d in enumerate(self.shape_signature) if d < 0)


@dataclass(frozen=True)
class OpInfo:
    index: int
    subgraph: int
    name: str
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: object | None = field(repr=False, compare=False, default=None)


@dataclass
class TFLiteModel:
    """A validated `.tflite` model: its tensors, ops and size, read without an interpreter.

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=x)
        >>> parsed = load_tflite("model.tflite")
        >>> parsed.op_counts(), parsed.int8_coverage()
        ({'FULLY_CONNECTED': 1}, 1.0)
        >>> [(t.dtype, t.shape) for t in parsed.inputs + parsed.outputs]
        [('INT8', (1, 8)), ('INT8', (1, 4))]
    """

    path: str | None
    data: bytes = field(repr=False)
    description: str
    tensors: list[list[TensorInfo]]
    ops: list[OpInfo]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    @property
    def gzip_size_bytes(self) -> int:
        return gzip_size(self.data)

    def tensor(self, index: int, subgraph: int = 0) -> TensorInfo:
        return self.tensors[subgraph][index]

    def op_counts(self) -> dict[str, int]:
        return dict(Counter(op.name for op in self.ops))

    def op_tensors(self, op: OpInfo) -> list[TensorInfo]:
        ids = [i for i in (*op.inputs, *op.outputs) if i >= 0]
        return [self.tensors[op.subgraph][i] for i in ids]

    def op_dtypes(self, op: OpInfo) -> set[str]:
        return {t.dtype for t in self.op_tensors(op)}

    @cached_property
    def _io_indices(self) -> tuple[frozenset[int], frozenset[int]]:
        return frozenset(t.index for t in self.inputs), frozenset(t.index for t in self.outputs)

    def is_boundary_op(self, op: OpInfo) -> bool:
        """QUANTIZE of a model input or DEQUANTIZE into a model output."""
        inputs, outputs = self._io_indices
        if op.name == "QUANTIZE" and op.subgraph == 0:
            return any(i in inputs for i in op.inputs)
        if op.name == "DEQUANTIZE" and op.subgraph == 0:
            return any(o in outputs for o in op.outputs)
        return False

    def float_ops(self) -> list[OpInfo]:
        """Ops that compute in floating point (any float input or output).

        Boundary QUANTIZE / DEQUANTIZE ops of a model with float I/O are not counted:
        they convert at the edge of an otherwise integer graph.
        """
        return [
            op
            for op in self.ops
            if self.op_dtypes(op) & FLOAT_TYPES and not self.is_boundary_op(op)
        ]

    def int8_coverage(self) -> float:
        """Fraction of ops (boundary converts excluded) that run fully in integer arithmetic."""
        counted = [op for op in self.ops if not self.is_boundary_op(op)]
        if not counted:
            return 0.0
        integer = [op for op in counted if not (self.op_dtypes(op) & FLOAT_TYPES)]
        return len(integer) / len(counted)

    def weight_stats(self) -> dict[str, int]:
        """Constant (weight) tensors: element count, zeros and bytes."""
        elements = zeros = nbytes = 0
        for tensors in self.tensors:
            for t in tensors:
                if not t.constant:
                    continue
                values = self.constant_values(t)
                if values is None:
                    continue
                elements += values.size
                zeros += int(np.count_nonzero(values == 0))
                nbytes += t.nbytes
        return {"weight_elements": elements, "weight_zeros": zeros, "weight_bytes": nbytes}

    def constant_values(self, tensor: TensorInfo) -> np.ndarray | None:
        """The stored values of a constant tensor (a read-only view of the file), or None for
        activations, sparse tensors and types NumPy does not store as TFLite does."""
        raw = self._buffers.get(tensor.buffer)
        if raw is None or tensor.dtype not in _NUMPY_TYPES or tensor.sparse:
            return None
        dtype = np.dtype(tensor.dtype.lower()).newbyteorder("<")
        return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)

    _buffers: dict[int, memoryview] = field(default_factory=dict, repr=False)
    # buffer index -> (offset, size) of the buffers stored after the flatbuffer (Buffer.offset > 1)
    external_buffers: dict[int, tuple[int, int]] = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        """A JSON-ready description (what `tfcompress inspect --json` prints)."""

        def tensor_dict(t: TensorInfo) -> dict:
            q = t.quantization
            return {
                "name": t.name,
                "dtype": t.dtype.lower(),
                "shape": list(t.shape),
                "shape_signature": list(t.shape_signature),
                "scale": list(q.scales) if q else [],
                "zero_point": list(q.zero_points) if q else [],
            }

        return {
            "path": self.path,
            "size_bytes": self.size_bytes,
            "gzip_size_bytes": self.gzip_size_bytes,
            "ops": self.op_counts(),
            "num_ops": len(self.ops),
            "int8_coverage": round(self.int8_coverage(), 4),
            "float_ops": [f"{op.name}#{op.index}" for op in self.float_ops()],
            "inputs": [tensor_dict(t) for t in self.inputs],
            "outputs": [tensor_dict(t) for t in self.outputs],
            **self.weight_stats(),
            "offset_buffers": len(self.external_buffers),
            "offset_buffer_bytes": sum(size for _, size in self.external_buffers.values()),
            "int4_tensors": sum(t.dtype == "INT4" for tensors in self.tensors for t in tensors),
        }


def gzip_size(data: bytes) -> int:
    """Size after gzip at level 9: how much a download or flash image of the file would take.

    Example:
        >>> gzip_size(bytes(1000)) < 100                          # zeros compress well
        True
    """
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _fail(where: str, what: str, fix: str | None = None) -> InvalidModelFileError:
    return InvalidModelFileError(
        what, where, fix or "re-export the model with tfcompress.export.to_tflite or `tfcompress convert`"
    )


def read_model_bytes(path: str | os.PathLike) -> bytes:
    """Read a `.tflite` file, with clear errors for a missing path or a directory."""
    p = Path(path)
    if not p.exists():
        raise InvalidModelFileError("file not found", str(p), "check the path")
    if p.is_dir():
        raise InvalidModelFileError("is a directory, not a .tflite file", str(p), "pass the .tflite file itself")
    return p.read_bytes()


def load_tflite(source: str | os.PathLike | bytes) -> TFLiteModel:
    """Validate and describe a `.tflite` model given as a path or as bytes.

    Raises:
        InvalidModelFileError: the data are not a valid TFLite flatbuffer; the
            message says what is wrong (not a TFLite file, truncated, an index
            out of range, ...).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=x)
        >>> parsed = load_tflite("model.tflite")
        >>> parsed.size_bytes == len(open("model.tflite", "rb").read()), [op.name for op in parsed.ops]
        (True, ['FULLY_CONNECTED'])
        >>> load_tflite(b"TFL3 but not a model")
        Traceback (most recent call last):
        ...
        tfcompress.errors.InvalidModelFileError: <bytes>: ...
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, where = bytes(source), "<bytes>"
        path = None
    else:
        data = read_model_bytes(source)
        where = path = str(source)
    return _parse(data, where, path)


def validate_tflite(source: str | os.PathLike | bytes) -> bytes:
    """Validate a model and return its bytes (what to hand to an interpreter).

    Example:
        >>> import keras, numpy as np
        >>> from tfcompress.export import to_tflite
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
        >>> _ = to_tflite(model, "model.tflite", "int8", representative_data=x)
        >>> data = validate_tflite("model.tflite")            # checked bytes, ready for an interpreter
        >>> data[4:8]
        b'TFL3'
    """
    return load_tflite(source).data


def _parse(data: bytes, where: str, path: str | None) -> TFLiteModel:
    if len(data) == 0:
        raise _fail(where, "file is empty")
    if len(data) < _MIN_SIZE:
        raise _fail(where, f"file is only {len(data)} bytes, too small to be a TFLite model")
    if data[4:8] != _FILE_IDENTIFIER:
        hint = ""
        if data[:2] == b"PK":
            hint = " (it looks like a .keras zip archive: convert it with `tfcompress convert`)"
        elif data[:4] == b"\x89HDF":
            hint = " (it looks like an HDF5 .h5 Keras file)"
        raise _fail(where, f"not a TFLite flatbuffer: missing the 'TFL3' identifier{hint}")
    root = int.from_bytes(data[0:4], "little")
    if root < 8 or root + 4 > len(data):
        raise _fail(where, "corrupted flatbuffer: root table offset points outside the file (truncated?)")
    model = read_flatbuffer(data, where)  # verified as it is read: every offset inside the file

    buffer_bytes: dict[int, memoryview] = {}
    external: dict[int, tuple[int, int]] = {}
    for b_index, buf in enumerate(model.buffers or []):
        has_data = buf.data is not None and not isinstance(buf.data, int) and len(buf.data) > 0
        if buf.offset and buf.offset > 1:
            # Large models store buffers after the flatbuffer, addressed by offset/size.
            if has_data:
                raise _fail(where, f"buffer {b_index} has both inline data and an offset")
            if buf.offset + buf.size > len(data):
                raise _fail(where, f"buffer {b_index} points past the end of the file (truncated?)")
            buffer_bytes[b_index] = memoryview(data)[buf.offset : buf.offset + buf.size]
            external[b_index] = (int(buf.offset), int(buf.size))
        elif has_data:
            buffer_bytes[b_index] = memoryview(buf.data)  # a view of `data`: nothing is copied
    op_names = verify_model(model, data, where, buffer_bytes)

    all_tensors: list[list[TensorInfo]] = []
    ops: list[OpInfo] = []
    for s_index, sg in enumerate(model.subgraphs):
        tensors: list[TensorInfo] = []
        for t_index, t in enumerate(sg.tensors or []):
            shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
            signature = tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None else shape
            if len(signature) != len(shape):
                signature = shape
            raw = buffer_bytes.get(int(t.buffer))
            quant = None
            q = t.quantization
            if q is not None and q.scale is not None and len(q.scale) > 0:
                scales = tuple(float(v) for v in q.scale)
                zps = tuple(int(z) for z in q.zeroPoint) if q.zeroPoint is not None else (0,) * len(scales)
                quant = QuantizationInfo(scales, zps, int(q.quantizedDimension))
            tensors.append(
                TensorInfo(
                    index=t_index,
                    name=_name(t),
                    dtype=enum_names("TensorType")[t.type],
                    shape=shape,
                    shape_signature=signature,
                    buffer=int(t.buffer),
                    constant=raw is not None,
                    nbytes=len(raw) if raw is not None else 0,
                    quantization=quant,
                    sparse=t.sparsity is not None,
                )
            )
        for op in sg.operators or []:
            code = int(op.opcodeIndex)
            ops.append(
                OpInfo(
                    index=len(ops),
                    subgraph=s_index,
                    name=op_names[code],
                    version=int(model.operatorCodes[code].version or 1),
                    inputs=tuple(int(i) for i in (op.inputs if op.inputs is not None else [])),
                    outputs=tuple(int(i) for i in (op.outputs if op.outputs is not None else [])),
                    options=op.builtinOptions,
                )
            )
        all_tensors.append(tensors)

    main = model.subgraphs[0]
    inputs = [all_tensors[0][int(i)] for i in main.inputs]
    outputs = [all_tensors[0][int(i)] for i in main.outputs]
    description = model.description.decode(errors="replace") if isinstance(model.description, bytes) else str(model.description or "")
    return TFLiteModel(
        path=path,
        data=data,
        description=description,
        tensors=all_tensors,
        ops=ops,
        inputs=inputs,
        outputs=outputs,
        _buffers=buffer_bytes,
        external_buffers=external,
    )


def _name(t) -> str:
    name = t.name
    if isinstance(name, bytes):
        return name.decode(errors="replace")
    return str(name or "")

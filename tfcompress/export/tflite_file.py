"""Reading and validating `.tflite` flatbuffers without an interpreter.

A malformed file must be rejected here, before any C++ interpreter (LiteRT,
TFLite Micro, the Edge TPU compiler) sees it: those parse with few bounds
checks and a corrupted offset can crash the process. We parse the whole file
with the pure-Python flatbuffer reader generated from the TFLite schema
(every read is bounds-checked by ``struct.unpack_from``) and then check the
cross references the interpreters trust: op-code, tensor and buffer indices,
buffer sizes against tensor shapes, quantization parameter shapes.
"""

from __future__ import annotations

import gzip
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from tfcompress.errors import InvalidModelFileError

_FILE_IDENTIFIER = b"TFL3"
_SCHEMA_VERSION = 3
# A flatbuffer holding one empty subgraph is larger than this.
_MIN_SIZE = 24

# Ops that only move data between the float boundary and the int8 graph: with
# float32 model I/O a full-int8 model starts with QUANTIZE and ends with DEQUANTIZE.
BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"})
INTEGER_ACTIVATION_TYPES = frozenset({"INT8", "UINT8", "INT16"})

_ITEMSIZE = {
    "FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2,
    "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16, "UINT64": 8, "UINT32": 4,
    "UINT16": 2, "BFLOAT16": 2,
}


@cache
def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


@cache
def _enum_names(enum_name: str) -> dict[int, str]:
    enum = getattr(_schema(), enum_name)
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


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
    """A validated `.tflite` model: its tensors, ops and size, read without an interpreter."""

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

    def is_boundary_op(self, op: OpInfo) -> bool:
        """QUANTIZE of a model input or DEQUANTIZE into a model output."""
        if op.name == "QUANTIZE" and op.subgraph == 0:
            return any(i in {t.index for t in self.inputs} for i in op.inputs)
        if op.name == "DEQUANTIZE" and op.subgraph == 0:
            return any(o in {t.index for t in self.outputs} for o in op.outputs)
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
        """The stored values of a constant tensor, or None for activations / odd dtypes."""
        raw = self._buffers.get(tensor.buffer)
        if raw is None or tensor.dtype not in _ITEMSIZE or tensor.dtype == "BFLOAT16":
            return None
        dtype = np.dtype(tensor.dtype.lower()).newbyteorder("<")
        return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)

    _buffers: dict[int, bytes] = field(default_factory=dict, repr=False)

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
        }


def gzip_size(data: bytes) -> int:
    """Size after gzip at level 9: how much a download or flash image of the file would take."""
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
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, where = bytes(source), "<bytes>"
        path = None
    else:
        data = read_model_bytes(source)
        where = path = str(source)
    return _parse(data, where, path)


def validate_tflite(source: str | os.PathLike | bytes) -> bytes:
    """Validate a model and return its bytes (what to hand to an interpreter)."""
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

    schema = _schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # any bounds or decode failure of the pure-Python reader
        raise _fail(where, f"corrupted or truncated flatbuffer ({type(exc).__name__}: {exc})") from None

    if model.version != _SCHEMA_VERSION:
        raise _fail(where, f"unsupported TFLite schema version {model.version} (expected {_SCHEMA_VERSION})")
    if not model.subgraphs:
        raise _fail(where, "model has no subgraph")
    operator_codes = model.operatorCodes or []
    buffers = model.buffers or []
    builtin_names = _enum_names("BuiltinOperator")
    type_names = _enum_names("TensorType")

    buffer_bytes: dict[int, bytes] = {}
    for b_index, buf in enumerate(buffers):
        if buf is None:
            continue
        if buf.offset and buf.offset > 1:
            # Large models store buffers after the flatbuffer, addressed by offset/size.
            if buf.offset + buf.size > len(data):
                raise _fail(where, f"buffer {b_index} points past the end of the file (truncated?)")
            buffer_bytes[b_index] = data[buf.offset : buf.offset + buf.size]
        elif buf.data is not None and len(buf.data) > 0:
            buffer_bytes[b_index] = np.asarray(buf.data, dtype=np.uint8).tobytes()

    op_names: list[str] = []
    for c_index, code in enumerate(operator_codes):
        builtin = max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))
        if builtin not in builtin_names:
            raise _fail(where, f"operator code {c_index} has unknown builtin op {builtin}")
        name = builtin_names[builtin]
        if name == "CUSTOM":
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
            name = f"CUSTOM:{custom}"
        op_names.append(name)

    all_tensors: list[list[TensorInfo]] = []
    ops: list[OpInfo] = []
    for s_index, sg in enumerate(model.subgraphs):
        tensors: list[TensorInfo] = []
        for t_index, t in enumerate(sg.tensors or []):
            tloc = f"subgraph {s_index} tensor {t_index}"
            if t.type not in type_names:
                raise _fail(where, f"{tloc} has unknown type {t.type}")
            dtype = type_names[t.type]
            shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
            if any(d < 0 for d in shape):
                raise _fail(where, f"{tloc} has a negative dimension in its shape {shape}")
            signature = tuple(int(d) for d in t.shapeSignature) if t.shapeSignature is not None else shape
            if len(signature) != len(shape):
                signature = shape
            if not 0 <= t.buffer < max(len(buffers), 1):
                raise _fail(where, f"{tloc} refers to buffer {t.buffer}, but the model has {len(buffers)}")
            raw = buffer_bytes.get(t.buffer)
            nbytes = len(raw) if raw is not None else 0
            if raw is not None and dtype in _ITEMSIZE and dtype != "BFLOAT16" and t.sparsity is None:
                expected = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE[dtype]
                if expected != nbytes:
                    raise _fail(
                        where,
                        f"{tloc} ({_name(t)}) holds {nbytes} bytes but its shape {shape} needs {expected}",
                    )
            quant = None
            q = t.quantization
            if q is not None and q.scale is not None and len(q.scale) > 0:
                scales = tuple(float(s) for s in q.scale)
                zps = tuple(int(z) for z in q.zeroPoint) if q.zeroPoint is not None else (0,) * len(scales)
                if len(zps) != len(scales):
                    raise _fail(where, f"{tloc} has {len(scales)} scales but {len(zps)} zero points")
                if len(scales) > 1:
                    qdim = int(q.quantizedDimension)
                    if not (0 <= qdim < len(shape)) or shape[qdim] != len(scales):
                        raise _fail(
                            where,
                            f"{tloc} has {len(scales)} per-channel scales that do not match "
                            f"dimension {qdim} of shape {shape}",
                        )
                if not all(np.isfinite(scales)) or any(s < 0 for s in scales):
                    raise _fail(where, f"{tloc} has a negative or non-finite quantization scale")
                quant = QuantizationInfo(scales, zps, int(q.quantizedDimension))
            tensors.append(
                TensorInfo(
                    index=t_index,
                    name=_name(t),
                    dtype=dtype,
                    shape=shape,
                    shape_signature=signature,
                    buffer=int(t.buffer),
                    constant=raw is not None,
                    nbytes=nbytes,
                    quantization=quant,
                )
            )
        n = len(tensors)
        for io_name, io in (("input", sg.inputs), ("output", sg.outputs)):
            for i in io if io is not None else []:
                if not 0 <= int(i) < n:
                    raise _fail(where, f"subgraph {s_index} {io_name} refers to tensor {i}, but it has {n}")
        for o_index, op in enumerate(sg.operators or []):
            oloc = f"subgraph {s_index} op {o_index}"
            if not 0 <= op.opcodeIndex < len(op_names):
                raise _fail(where, f"{oloc} refers to operator code {op.opcodeIndex}, but the model has {len(op_names)}")
            ins = tuple(int(i) for i in (op.inputs if op.inputs is not None else []))
            outs = tuple(int(i) for i in (op.outputs if op.outputs is not None else []))
            for i in (*ins, *outs):
                if not -1 <= i < n:
                    raise _fail(where, f"{oloc} ({op_names[op.opcodeIndex]}) refers to tensor {i}, but the subgraph has {n}")
            version = int(operator_codes[op.opcodeIndex].version or 1)
            ops.append(
                OpInfo(
                    index=len(ops),
                    subgraph=s_index,
                    name=op_names[op.opcodeIndex],
                    version=version,
                    inputs=ins,
                    outputs=outs,
                    options=op.builtinOptions,
                )
            )
        all_tensors.append(tensors)

    main = model.subgraphs[0]
    inputs = [all_tensors[0][int(i)] for i in (main.inputs if main.inputs is not None else [])]
    outputs = [all_tensors[0][int(i)] for i in (main.outputs if main.outputs is not None else [])]
    if not inputs or not outputs:
        raise _fail(where, "the main subgraph has no inputs or no outputs")
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
    )


def _name(t) -> str:
    name = t.name
    if isinstance(name, bytes):
        return name.decode(errors="replace")
    return str(name or "")

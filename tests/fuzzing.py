"""Fuzzing what reads untrusted `.tflite` files: a seeded mutator, base models, one command runner.

Used by tests/test_fuzz.py (a few hundred mutants) and benchmarks/fuzz_census.py (thousands).

The mutator makes one edit per mutant, of three kinds:

* ``site``: one field the flatbuffer verifier read, rewritten in place with a value chosen for
  what it is (`tfcompress.export.flatbuffer.Site`): a table's vtable offset shifted, a vtable
  entry, an offset re-aimed at another table or outside the file, a vector length, a scalar
  (tensor types, shapes, indices, quantization parameters, op options) set to a boundary value;
* ``byte``: one byte anywhere set to a random value;
* ``semantic``: one field of the parsed model (``schema_py_generated.ModelT``) changed and the
  model written again by a flatbuffers builder (structurally valid, semantically broken): shapes,
  ranks, types, indices, quantization, builtin codes, op options, the op order, strings that are
  not UTF-8, sparsity parameters.

``mutants(data, count, seed)`` is deterministic: the same seed gives the same files.
`base_models` writes the four small int8 models the census mutates (conv and dense, int8 and
float I/O); `run_command` runs one command on one file the way the census counts it, in the
process that calls it (run it in a `tfcompress.export.isolation.Child` so that a crash is
observed instead of suffered).

Example:
    >>> data = open("model.tflite", "rb").read()            # doctest: +SKIP
    >>> for mutant in mutants(data, 3, seed=0):             # doctest: +SKIP
    ...     print(mutant.kind, mutant.edit)
"""

from __future__ import annotations

import copy
import functools
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tfcompress.export.flatbuffer import Site, verify_flatbuffer


@dataclass(frozen=True)
class Mutant:
    index: int
    kind: str  # "site" | "byte" | "semantic"
    edit: str  # what was changed, for the census
    data: bytes


def repack(model_t) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model_t.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def edit_sites(data: bytes) -> list[Site]:
    sites: list[Site] = []
    verify_flatbuffer(data, visit=sites.append)
    return sites


_INT_BOUNDARIES = (0, 1, -1, 2, 3, 4, 7, 8, 16, 63, 64, 127, 128, 200, 255, 256, 1 << 16, 1 << 20,
                   65536, 1_048_576, 2**31 - 1, -(2**31), 2**32 - 1, -2, -128)
_FLOATS = (0.0, -1.0, 1.0, float("nan"), float("inf"), -float("inf"), 1e-40, 1e38, -1e-3, 2.0)


def _fits(fmt: str, value) -> bool:
    try:
        struct.pack(fmt, value)
    except (struct.error, OverflowError):
        return False
    return True


def _scalar_value(rng: np.random.Generator, fmt: str, old):
    if fmt in ("<f", "<d"):
        choice = int(rng.integers(0, len(_FLOATS) + 2))
        if choice == len(_FLOATS):
            return -old
        if choice == len(_FLOATS) + 1:
            return old * float(rng.choice([0.5, 2.0, 1000.0]))
        return _FLOATS[choice]
    if fmt == "<?":
        return not old
    candidates = [v for v in _INT_BOUNDARIES if _fits(fmt, v)] + [old + 1, old - 1, old * 2, -old]
    candidates = [v for v in candidates if _fits(fmt, v) and v != old] or [0]
    if rng.random() < 0.15:
        bits = struct.calcsize(fmt) * 8
        low = -(2 ** (bits - 1)) if fmt[1].islower() else 0
        return int(rng.integers(low, low + 2**bits))
    return candidates[int(rng.integers(0, len(candidates)))]


def _site_edit(data: bytes, sites: list[Site], rng: np.random.Generator) -> tuple[str, bytes]:
    tables = [s for s in sites if s.kind == "table"]
    editable = [s for s in sites if s.kind != "table"]
    site = editable[int(rng.integers(0, len(editable)))]
    out = bytearray(data)
    old = struct.unpack_from(site.fmt, data, site.pos)[0]
    if site.kind == "uoffset" and rng.random() < 0.5:
        # aim the offset at another table (of any type) in the file
        other = tables[int(rng.integers(0, len(tables)))]
        new = (other.pos - site.pos) % 2**32
        label = f"re-aimed at the {other.name} table at {other.path or 'root'}"
    elif site.kind == "soffset":
        new = old + int(rng.choice([-8, -4, -2, 2, 4, 8, 12, 16, 100, -100]))
        label = f"vtable shifted {new - old:+d}"
    elif site.kind == "union_type":
        new = int(rng.integers(0, 256))
        label = f"union type {old} -> {new}"
    else:
        new = _scalar_value(rng, site.fmt, old)
        label = f"{old!r} -> {new!r}"
    if not _fits(site.fmt, new):
        new = old ^ 1 if isinstance(old, int) else 0
    struct.pack_into(site.fmt, out, site.pos, new)
    return f"{site.kind} {site.path or 'root'}: {label}", bytes(out)


def _byte_edit(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    out = bytearray(data)
    pos = int(rng.integers(0, len(data)))
    value = int(rng.integers(0, 256)) if rng.random() < 0.5 else out[pos] ^ (1 << int(rng.integers(0, 8)))
    label = f"byte {pos}: {out[pos]} -> {value}"
    out[pos] = value
    return label, bytes(out)


# ----------------------------------------------------------------------------- semantic edits


def _pick(rng, items):
    return items[int(rng.integers(0, len(items)))]


def _all_tensors(m):
    return [(s, t, i) for s, sg in enumerate(m.subgraphs) for i, t in enumerate(sg.tensors or [])]


def _all_ops(m):
    return [(s, op, i) for s, sg in enumerate(m.subgraphs) for i, op in enumerate(sg.operators or [])]


def _int_array(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).astype(np.int32)


def _edit_shape(m, rng):
    s, t, i = _pick(rng, _all_tensors(m))
    shape = list(t.shape) if t.shape is not None else []
    choice = int(rng.integers(0, 5))
    if choice == 0 or not shape:
        shape = [1] * int(rng.choice([0, 5, 7, 9, 64]))
        label = f"rank {len(shape)}"
    elif choice == 1:
        shape = shape[:-1]
        label = "last dimension dropped"
    else:
        k = int(rng.integers(0, len(shape)))
        shape[k] = int(rng.choice([0, -1, 2, 3, 1000, 65536, 1_048_576, 2**31 - 1]))
        label = f"dimension {k} = {shape[k]}"
    t.shape = _int_array(shape)
    return f"subgraph {s} tensor {i} shape: {label}"


def _edit_type(m, rng):
    s, t, i = _pick(rng, _all_tensors(m))
    t.type = int(rng.integers(-2, 20))
    return f"subgraph {s} tensor {i} type = {t.type}"


def _edit_buffer(m, rng):
    s, t, i = _pick(rng, _all_tensors(m))
    t.buffer = int(rng.choice([0, 1, len(m.buffers) - 1, int(rng.integers(0, len(m.buffers))), len(m.buffers)]))
    return f"subgraph {s} tensor {i} buffer = {t.buffer}"


def _edit_quantization(m, rng):
    quantized = [(s, t, i) for s, t, i in _all_tensors(m) if t.quantization is not None and t.quantization.scale is not None]
    if not quantized:
        return None
    s, t, i = _pick(rng, quantized)
    q = t.quantization
    choice = int(rng.integers(0, 6))
    if choice == 0:
        q.scale = np.asarray(q.scale, np.float32).copy()
        q.scale[0] = float(rng.choice([0.0, -0.5, np.nan, np.inf, 1e-45, 3e38]))
        label = f"scale[0] = {q.scale[0]}"
    elif choice == 1:
        q.zeroPoint = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.int64).copy()
        q.zeroPoint[0] = int(rng.choice([200, -200, 128, -129, 255, 32768, 2**40]))
        label = f"zero_point[0] = {q.zeroPoint[0]}"
    elif choice == 2:
        q.scale = np.asarray(q.scale, np.float32)[: max(0, len(q.scale) - 1)]
        label = "one scale dropped"
    elif choice == 3:
        q.quantizedDimension = int(rng.choice([-1, 1, 3, 4, 100]))
        label = f"quantized_dimension = {q.quantizedDimension}"
    elif choice == 4:
        q.zeroPoint = np.asarray(list(q.zeroPoint if q.zeroPoint is not None else [0]) + [0], np.int64)
        label = "one zero point added"
    else:
        t.quantization = None
        label = "quantization removed"
    return f"subgraph {s} tensor {i} {label}"


def _edit_op_io(m, rng):
    s, op, i = _pick(rng, _all_ops(m))
    n = len(m.subgraphs[s].tensors or [])
    which = "inputs" if rng.random() < 0.7 else "outputs"
    values = list(getattr(op, which)) if getattr(op, which) is not None else []
    choice = int(rng.integers(0, 4))
    if choice == 0 and values:
        k = int(rng.integers(0, len(values)))
        values[k] = int(rng.choice([-1, -2, n, int(rng.integers(0, n))]))
        label = f"{which}[{k}] = {values[k]}"
    elif choice == 1 and values:
        values = values[:-1]
        label = f"last of {which} dropped"
    elif choice == 2:
        values = values + [int(rng.choice([-1, int(rng.integers(0, n))]))]
        label = f"{which} += [{values[-1]}]"
    else:
        values = []
        label = f"{which} emptied"
    setattr(op, which, _int_array(values))
    return f"subgraph {s} op {i} {label}"


def _edit_opcode(m, rng):
    choice = int(rng.integers(0, 4))
    if choice == 0:
        s, op, i = _pick(rng, _all_ops(m))
        op.opcodeIndex = int(rng.integers(0, len(m.operatorCodes) + 1))
        return f"subgraph {s} op {i} opcode_index = {op.opcodeIndex}"
    c = int(rng.integers(0, len(m.operatorCodes)))
    code = m.operatorCodes[c]
    if choice == 1:
        code.builtinCode = int(rng.integers(0, 215))
        code.deprecatedBuiltinCode = min(code.builtinCode, 127)
        return f"operator code {c} builtin = {code.builtinCode}"
    if choice == 2:
        code.deprecatedBuiltinCode = int(rng.integers(-128, 128))
        return f"operator code {c} deprecated builtin = {code.deprecatedBuiltinCode}"
    code.version = int(rng.choice([0, -1, 2, 7, 99, 2**31 - 1]))
    return f"operator code {c} version = {code.version}"


def _edit_options(m, rng):
    with_options = [(s, op, i) for s, op, i in _all_ops(m) if op.builtinOptions is not None]
    if not with_options:
        return None
    s, op, i = _pick(rng, with_options)
    options = op.builtinOptions
    if rng.random() < 0.2:
        op.builtinOptionsType = int(rng.integers(0, 130))
        return f"subgraph {s} op {i} builtin_options_type = {op.builtinOptionsType}"
    names = [k for k, v in vars(options).items() if isinstance(v, int | float | bool | np.integer | np.floating)]
    if not names:
        return None
    name = _pick(rng, names)
    old = getattr(options, name)
    if isinstance(old, float | np.floating):
        new = float(rng.choice([-1.0, 0.0, np.nan, np.inf, 1e30]))
    elif isinstance(old, bool):
        new = not old
    else:
        new = int(rng.choice([-1, 0, 2, 3, 7, 99, 127, 1 << 20]))
    setattr(options, name, new)
    return f"subgraph {s} op {i} {type(options).__name__}.{name}: {old} -> {new}"


def _edit_graph(m, rng):
    s = int(rng.integers(0, len(m.subgraphs)))
    sg = m.subgraphs[s]
    ops = list(sg.operators or [])
    n = len(sg.tensors or [])
    choice = int(rng.integers(0, 6))
    if choice == 0 and ops:
        k = int(rng.integers(0, len(ops)))
        del ops[k]
        label = f"op {k} removed"
    elif choice == 1 and len(ops) > 1:
        a, b = sorted(int(x) for x in rng.choice(len(ops), 2, replace=False))
        ops[a], ops[b] = ops[b], ops[a]
        label = f"ops {a} and {b} swapped"
    elif choice == 2 and ops:
        k = int(rng.integers(0, len(ops)))
        ops.insert(k, copy.deepcopy(ops[k]))
        label = f"op {k} duplicated"
    elif choice == 3:
        sg.inputs = _int_array([int(rng.choice([-1, n, int(rng.integers(0, n))]))])
        label = f"inputs = {list(sg.inputs)}"
    elif choice == 4:
        sg.outputs = _int_array([int(rng.choice([-1, n, int(rng.integers(0, n))]))])
        label = f"outputs = {list(sg.outputs)}"
    else:
        ops = []
        label = "all ops removed"
    sg.operators = ops
    return f"subgraph {s} {label}"


def _edit_data(m, rng):
    filled = [b for b, buf in enumerate(m.buffers) if buf.data is not None and len(buf.data)]
    if not filled:
        return None
    b = _pick(rng, filled)
    data = np.asarray(m.buffers[b].data, np.uint8)
    choice = int(rng.integers(0, 3))
    if choice == 0:
        m.buffers[b].data = data[: len(data) // 2]
        label = "halved"
    elif choice == 1:
        m.buffers[b].data = np.concatenate([data, data[:4]])
        label = "4 bytes added"
    else:
        m.buffers[b].data = None
        label = "emptied"
    return f"buffer {b} {label}"


def _edit_strings(m, rng):
    bad = bytes([0xFF, 0xFE, 0xC3]) + bytes(rng.integers(128, 256, 3, dtype=np.uint8))
    choice = int(rng.integers(0, 3))
    if choice == 0:
        s, t, i = _pick(rng, _all_tensors(m))
        t.name = bad
        return f"subgraph {s} tensor {i} name not UTF-8"
    if choice == 1:
        c = int(rng.integers(0, len(m.operatorCodes)))
        m.operatorCodes[c].builtinCode = 32  # CUSTOM
        m.operatorCodes[c].deprecatedBuiltinCode = 32
        m.operatorCodes[c].customCode = bad
        return f"operator code {c} custom, custom_code not UTF-8"
    m.description = bad
    return "description not UTF-8"


def _edit_sparsity(m, rng):
    constants = [(s, t, i) for s, t, i in _all_tensors(m)
                 if t.buffer < len(m.buffers) and m.buffers[t.buffer].data is not None and t.shape is not None
                 and len(t.shape) >= 1]
    if not constants:
        return None
    s, t, i = _pick(rng, constants)
    rank = len(t.shape)
    sparsity = schema.SparsityParametersT()
    order = list(range(rank))
    if rng.random() < 0.3:
        order = order[::-1]
    sparsity.traversalOrder = _int_array(order)
    dims = []
    for d in range(rank):
        meta = schema.DimensionMetadataT()
        if d < rank - 1 or rng.random() < 0.3:
            meta.format = schema.DimensionType.DENSE
            meta.denseSize = int(t.shape[order[d]]) if rng.random() < 0.8 else int(rng.integers(0, 9))
        else:
            meta.format = schema.DimensionType.SPARSE_CSR
            segments = schema.Int32VectorT()
            segments.values = _int_array(np.sort(rng.integers(0, 4, 3)))
            indices = schema.Int32VectorT()
            indices.values = _int_array(rng.integers(-1, 8, int(rng.integers(0, 5))))
            meta.arraySegmentsType = schema.SparseIndexVector.Int32Vector
            meta.arraySegments = segments
            meta.arrayIndicesType = schema.SparseIndexVector.Int32Vector
            meta.arrayIndices = indices
        dims.append(meta)
    sparsity.dimMetadata = dims
    t.sparsity = sparsity
    return f"subgraph {s} tensor {i} made sparse"


_SEMANTIC = (
    (_edit_shape, 3), (_edit_type, 1), (_edit_buffer, 1), (_edit_quantization, 3), (_edit_op_io, 3),
    (_edit_opcode, 2), (_edit_options, 2), (_edit_graph, 2), (_edit_data, 1), (_edit_strings, 1),
    (_edit_sparsity, 1),
)


def _semantic_edit(data: bytes, rng: np.random.Generator) -> tuple[str, bytes] | None:
    weights = np.array([w for _, w in _SEMANTIC], dtype=np.float64)
    edit = _SEMANTIC[int(rng.choice(len(_SEMANTIC), p=weights / weights.sum()))][0]
    model_t = schema.ModelT.InitFromPackedBuf(data, 0)
    label = edit(model_t, rng)
    if label is None:
        return None
    try:
        return label, repack(model_t)
    except (struct.error, OverflowError, ValueError, TypeError):
        return None


def mutants(data: bytes, count: int, seed: int = 0, *, weights=(0.55, 0.1, 0.35)) -> Iterator[Mutant]:
    """``count`` single-edit mutants of ``data``, reproducible from ``seed``.

    ``weights`` are the shares of site, byte and semantic edits.
    """
    rng = np.random.default_rng(seed)
    sites = edit_sites(data)
    kinds = ("site", "byte", "semantic")
    p = np.asarray(weights, dtype=np.float64) / math.fsum(weights)
    made = 0
    while made < count:
        kind = kinds[int(rng.choice(3, p=p))]
        if kind == "site":
            result = _site_edit(data, sites, rng)
        elif kind == "byte":
            result = _byte_edit(data, rng)
        else:
            result = _semantic_edit(data, rng)
        if result is None or result[1] == data:
            continue
        yield Mutant(made, kind, result[0], result[1])
        made += 1


# ----------------------------------------------------------------------------- base models

BASE_MODELS = ("conv_int8", "conv_float_io", "dense_int8", "dense_float_io")


def base_models(out_dir) -> dict[str, bytes]:
    """Write and return the four models the census mutates (needs TensorFlow; a few seconds each).

    ``conv``: 8x8x1 -> Conv2D(4, 3x3, ReLU) -> Flatten -> Dense(3) -> Softmax; ``dense``: 16 ->
    Dense(8, ReLU) -> Dense(4). Full int8, per-channel weights; ``_int8`` with int8 I/O,
    ``_float_io`` with float32 I/O (QUANTIZE / DEQUANTIZE at the edges). 1.7 to 3 KB each.
    """
    from pathlib import Path

    import keras

    from tfcompress.export import to_tflite

    out_dir = Path(out_dir)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    conv = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(3), keras.layers.Softmax()])
    dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)])
    calibration = {"conv": rng.random((32, 8, 8, 1), dtype=np.float32), "dense": rng.random((32, 16), dtype=np.float32)}
    models = {}
    for name in BASE_MODELS:
        kind, io = name.split("_", 1)
        path = out_dir / f"{name}.tflite"
        to_tflite(conv if kind == "conv" else dense, path, "int8", representative_data=calibration[kind],
                  io_dtype="int8" if io == "int8" else "float32", calibration_samples=32)
        models[name] = path.read_bytes()
    return models


@functools.cache
def cached_base_models() -> dict[str, bytes]:
    """`base_models`, built once per process (test modules share them)."""
    import tempfile

    return base_models(tempfile.mkdtemp(prefix="tfcompress_fuzz_base_"))


# ----------------------------------------------------------------------------- one command

COMMANDS = ("load_tflite", "inspect", "edgetpu", "micro", "bench", "evaluate")


def run_command(command: str, path: str, workdir: str) -> dict:
    """Run one census command on one file here; say how it ended.

    ``outcome``: ``ok`` (it ran; exit code 0, or 1 for a report that says "not ready" /
    "different"), ``rejected`` (a `TfcompressError`: for the CLI commands exactly one
    ``error:`` line on stderr and exit code 1, else ``format`` is False), ``traceback`` (any
    other exception, or the CLI's "unexpected failure" line). The CLI commands run
    ``--in-process``: what is measured is the verifier, not the isolation behind it.
    """
    import contextlib
    import io
    import os
    import time

    from tfcompress.errors import TfcompressError

    started = time.perf_counter()
    result: dict = {"command": command}
    if command in ("load_tflite", "evaluate"):
        from tfcompress.export import evaluate, load_tflite

        try:
            model = load_tflite(path)
            if command == "evaluate":
                shape = model.inputs[0].shape
                x = np.random.default_rng(0).random((2, *shape[1:]), dtype=np.float32) if shape else \
                    np.zeros((2,), np.float32)
                evaluate(path, x, np.zeros(2, np.int64))
            result.update(outcome="ok")
        except TfcompressError as exc:
            result.update(outcome="rejected", message=str(exc).splitlines()[0][:300], format=True)
        except Exception as exc:
            result.update(outcome="traceback", message=f"{type(exc).__name__}: {str(exc)[:300]}")
    else:
        from tfcompress.cli import main

        argv = {
            "inspect": ["inspect", path, "--json"],
            "edgetpu": ["edgetpu", path, "--static", "--json"],
            "micro": ["micro", path, "-o", os.path.join(workdir, "micro"), "--samples", "2", "--quiet", "--in-process"],
            "bench": ["bench", path, "--runs", "3", "--warmup", "1", "--quiet", "--json", "--in-process"],
        }[command]
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
        except BaseException as exc:  # an exception escaping main is a traceback
            code = None
            result.update(outcome="traceback", message=f"{type(exc).__name__}: {str(exc)[:300]}")
        if code is not None:
            lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
            errors = [ln for ln in lines if ": error: " in ln]
            if any("run with --verbose for the traceback" in ln for ln in errors):
                result.update(outcome="traceback", message=errors[0][:300])
            elif errors:
                result.update(outcome="rejected", message=errors[0][:300], format=code == 1 and len(lines) == 1)
            else:
                result.update(outcome="ok", exit_code=code)
    result["seconds"] = time.perf_counter() - started
    result["max_rss_mb"] = _peak_rss_mb()
    return result


def _peak_rss_mb() -> float:
    """This process's peak resident memory since it started (VmHWM; ``ru_maxrss`` would count the
    parent it was forked from, which Linux carries across exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def litert_verifier_rejects(data: bytes) -> bool:
    """Whether LiteRT's C++ flatbuffers verifier (run by its interpreter before anything else)
    rejects ``data``: LiteRT then says "The model is not a valid Flatbuffer buffer". What happens
    after the verifier (building the interpreter on a semantically broken model) may crash:
    call this in a child process."""
    from ai_edge_litert import interpreter as litert

    try:
        litert.Interpreter(model_content=data,
                           experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except Exception as exc:
        return "not a valid Flatbuffer" in str(exc)
    return False

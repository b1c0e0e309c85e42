"""A malformed .tflite is rejected before any interpreter sees it, never a crash."""

from __future__ import annotations

import copy
import json
import re
import struct
import subprocess
import sys
import textwrap
import time
import zipfile

import flatbuffers
import fuzzing
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from tfcompress.cli import main as cli_main
from tfcompress.errors import InvalidModelFileError
from tfcompress.export.flatbuffer import verify_flatbuffer
from tfcompress.export.tflite_file import gzip_size, load_tflite

fb_schema = schema


def _repack(model_t) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model_t.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _mutated(data: bytes, mutate) -> bytes:
    model_t = schema.ModelT.InitFromPackedBuf(data, 0)
    mutate(model_t)
    return _repack(model_t)


def test_valid_model_is_described(lenet_int8_path):
    model = load_tflite(lenet_int8_path)
    assert model.size_bytes == lenet_int8_path.stat().st_size
    assert model.gzip_size_bytes == gzip_size(lenet_int8_path.read_bytes()) < model.size_bytes
    assert model.op_counts() == {"CONV_2D": 2, "MAX_POOL_2D": 2, "RESHAPE": 1, "FULLY_CONNECTED": 2}
    conv = next(op for op in model.ops if op.name == "CONV_2D")
    kernel = model.tensor(conv.inputs[1])
    values = model.constant_values(kernel)
    assert values.dtype == np.int8 and values.shape == (20, 5, 5, 1)
    # Per-channel symmetric int8 weights use the full [-127, 127] range in every channel.
    assert np.all(np.abs(values).reshape(20, -1).max(axis=1) == 127)
    # Repacking the parsed model gives a file the validator accepts again.
    assert load_tflite(_repack(schema.ModelT.InitFromPackedBuf(model.data, 0))).op_counts() == model.op_counts()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: b"", "empty"),
        (lambda d: d[:12], "too small"),
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:-40], "truncated"),
        (lambda d: d[:4] + b"XXXX" + d[8:], "TFL3"),
        (lambda d: b"\xff\xff\xff\x7f" + d[4:], "root table offset"),
        (lambda d: bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "TFL3"),
    ],
)
def test_corrupted_bytes_are_rejected(lenet_int8_path, make, message):
    data = lenet_int8_path.read_bytes()
    with pytest.raises(InvalidModelFileError, match=message):
        load_tflite(make(data))


def _set_op_input(m):
    op = m.subgraphs[0].operators[0]
    op.inputs = np.array([999, *op.inputs[1:]], dtype=np.int32)


def _set_opcode(m):
    m.subgraphs[0].operators[1].opcodeIndex = 77


def _set_buffer(m):
    m.subgraphs[0].tensors[1].buffer = 10_000


def _shrink_weights(m):
    conv = m.subgraphs[0].operators[0]
    kernel = m.subgraphs[0].tensors[conv.inputs[1]]
    m.buffers[kernel.buffer].data = m.buffers[kernel.buffer].data[:10]


def _bad_scales(m):
    conv = m.subgraphs[0].operators[0]
    kernel = m.subgraphs[0].tensors[conv.inputs[1]]
    kernel.quantization.scale = kernel.quantization.scale[:3]
    kernel.quantization.zeroPoint = kernel.quantization.zeroPoint[:3]


def _bad_output(m):
    m.subgraphs[0].outputs = np.array([5000], dtype=np.int32)


def _negative_dim(m):
    tensor = m.subgraphs[0].tensors[0]
    tensor.shape = np.array([1, -7, 28, 1], dtype=np.int32)


def _bad_version(m):
    m.version = 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_set_op_input, "refers to tensor 999"),
        (_set_opcode, "operator code 77"),
        (_set_buffer, "buffer 10000"),
        (_shrink_weights, "holds 10 bytes"),
        (_bad_scales, "per-channel scales"),
        (_bad_output, "refers to tensor 5000"),
        (_negative_dim, "negative dimension"),
        (_bad_version, "schema version"),
    ],
)
def test_inconsistent_flatbuffers_are_rejected(lenet_int8_path, mutate, message):
    data = _mutated(lenet_int8_path.read_bytes(), mutate)
    with pytest.raises(InvalidModelFileError, match=message):
        load_tflite(data)


def test_other_file_kinds_get_a_hint(tmp_path):
    archive = tmp_path / "model.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("config.json", "{}" * 20)
    with pytest.raises(InvalidModelFileError, match=r"\.keras zip archive"):
        load_tflite(archive)
    with pytest.raises(InvalidModelFileError, match="file not found"):
        load_tflite(tmp_path / "nope.tflite")
    with pytest.raises(InvalidModelFileError, match="directory"):
        load_tflite(tmp_path)


def test_random_corruption_never_crashes_an_interpreter(lenet_int8_path, tmp_path):
    """Flip bytes at random; whatever the validator accepts must run on LiteRT without a crash.

    Runs in a child process so that a segfault would show as a signal, not kill pytest.
    """
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from tfcompress.errors import InvalidModelFileError, TfcompressError
        from tfcompress.export.tflite_file import load_tflite
        from tfcompress.export.runtime import ModelRunner
        data = open(sys.argv[1], "rb").read()
        rng = np.random.default_rng(int(sys.argv[2]))
        rejected = accepted = 0
        for trial in range(60):
            corrupt = bytearray(data)
            # Corrupt the flatbuffer tables (the head and tail of the file), not only weight bytes.
            for _ in range(int(rng.integers(1, 6))):
                region = rng.integers(0, 2)
                pos = int(rng.integers(0, 2048)) if region == 0 else len(data) - 1 - int(rng.integers(0, 4096))
                corrupt[pos] = int(rng.integers(0, 256))
            try:
                load_tflite(bytes(corrupt))
            except InvalidModelFileError:
                rejected += 1
                continue
            accepted += 1
            try:
                runner = ModelRunner(bytes(corrupt))
                runner.predict(np.zeros((1, 28, 28, 1), np.float32))
            except TfcompressError:
                pass
            except Exception:
                pass
        print("DONE", rejected, accepted)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(lenet_int8_path), "7"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"child died (signal {-result.returncode}): {result.stderr[-2000:]}"
    done = [line for line in result.stdout.splitlines() if line.startswith("DONE")]
    assert done, result.stdout
    rejected = int(done[0].split()[1])
    assert rejected > 0


# ----------------------------------------------------------------------------- issue 20: untrusted files
# Each case of the issue, built deterministically from the small int8 models of tests/fuzzing.py:
# the verifier rejects it with a clear message, and every command that reads .tflite files says so
# in one line with exit code 1 (none of them reaches an interpreter).


@pytest.fixture(scope="module")
def tiny():
    return fuzzing.cached_base_models()


def _edit(data: bytes, mutate) -> bytes:
    model_t = schema.ModelT.InitFromPackedBuf(data, 0)
    mutate(model_t)
    return _repack(model_t)


def _tensor(m, index):
    return m.subgraphs[0].tensors[index]


def _op(m, index):
    return m.subgraphs[0].operators[index]


def _conv_filter_absent(m):  # conv_int8: CONV_2D(0, 4, 3) -> CONV_2D(0, -1, 3)
    _op(m, 0).inputs = np.array([0, -1, 3], np.int32)


def _quantize_zero_point(m):  # conv_float_io: the QUANTIZE output (tensor 5)
    _tensor(m, 5).quantization.zeroPoint = np.array([200], np.int64)


def _quantize_scale_zero(m):
    _tensor(m, 5).quantization.scale = np.array([0.0], np.float32)


def _quantize_uint8(m):
    _tensor(m, 5).type = fb_schema.TensorType.UINT8


def _quantize_uint8_in_range(m):  # a UINT8 output whose zero point fits uint8: the int8 conv refuses it
    _tensor(m, 5).type = fb_schema.TensorType.UINT8
    _tensor(m, 5).quantization.zeroPoint = np.array([100], np.int64)


def _rank_64_input(m):
    _tensor(m, 0).shape = np.array([1] * 61 + [8, 8, 1], np.int32)
    _tensor(m, 0).shapeSignature = None


def _unknown_builtin(m):  # the SOFTMAX op code
    m.operatorCodes[3].builtinCode = 250
    m.operatorCodes[3].deprecatedBuiltinCode = 127


def _inconsistent_deprecated_code(m):
    m.operatorCodes[3].deprecatedBuiltinCode = 3  # CONV_2D, while builtin_code says SOFTMAX (25)


def _rank_0_input(m):
    _tensor(m, 0).shape = np.array([], np.int32)
    _tensor(m, 0).shapeSignature = None


def _huge_dimension(m):
    _tensor(m, 0).shape = np.array([1, 1_048_576, 8, 1], np.int32)
    _tensor(m, 0).shapeSignature = None


def _input_4_gib(m):
    _tensor(m, 0).shape = np.array([1, 65536, 65536, 1], np.int32)
    _tensor(m, 0).shapeSignature = None


def _softmax_beta(m):
    _op(m, 3).builtinOptions.beta = -1.0


def _softmax_tiny_beta(m):  # positive, but the int8 kernel's multiplier would be < 1 (an abort)
    _op(m, 3).builtinOptions.beta = 4.5e-44


def _custom_code_not_utf8(m):
    m.operatorCodes[3].builtinCode = fb_schema.BuiltinOperator.CUSTOM
    m.operatorCodes[3].deprecatedBuiltinCode = fb_schema.BuiltinOperator.CUSTOM
    m.operatorCodes[3].customCode = b"\xff\xfe op"


def _tensor_name_not_utf8(m):
    _tensor(m, 5).name = b"conv\xc3("


def _input_lacks_data(m):  # FULLY_CONNECTED reads its own output
    _op(m, 2).inputs = np.array([7, 2, -1], np.int32)


def _no_operators(m):
    m.subgraphs[0].operators = []


def _fc_without_outputs(m):  # dense_int8: the second FULLY_CONNECTED
    _op(m, 1).outputs = np.array([], np.int32)


def _sparse_weights(m):  # conv_int8: the FULLY_CONNECTED weights (3 x 144) made sparse, 3 values stored
    sparsity = fb_schema.SparsityParametersT()
    sparsity.traversalOrder = np.array([0, 1], np.int32)
    dense = fb_schema.DimensionMetadataT()
    dense.format, dense.denseSize = fb_schema.DimensionType.DENSE, 3
    csr = fb_schema.DimensionMetadataT()
    csr.format = fb_schema.DimensionType.SPARSE_CSR
    csr.arraySegmentsType = csr.arrayIndicesType = fb_schema.SparseIndexVector.Int32Vector
    csr.arraySegments, csr.arrayIndices = fb_schema.Int32VectorT(), fb_schema.Int32VectorT()
    csr.arraySegments.values = np.array([0, 1, 2, 3], np.int32)
    csr.arrayIndices.values = np.array([0, 5, 7], np.int32)
    sparsity.dimMetadata = [dense, csr]
    _tensor(m, 2).sparsity = sparsity


def _sparse_index_out_of_range(m):
    _sparse_weights(m)
    _tensor(m, 2).sparsity.dimMetadata[1].arrayIndices.values = np.array([0, 5, 144], np.int32)


def _subgraph_calls_itself(m):  # a WHILE whose body is the subgraph it runs in
    code = fb_schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb_schema.BuiltinOperator.WHILE
    code.version = 1
    m.operatorCodes.append(code)
    loop = fb_schema.OperatorT()
    loop.opcodeIndex = len(m.operatorCodes) - 1
    loop.inputs, loop.outputs = np.array([8], np.int32), np.array([9], np.int32)
    loop.builtinOptionsType = fb_schema.BuiltinOptions.WhileOptions
    loop.builtinOptions = fb_schema.WhileOptionsT()
    m.subgraphs[0].operators.append(loop)
    extra = copy.deepcopy(m.subgraphs[0].tensors[8])
    extra.name = b"loop"
    m.subgraphs[0].tensors.append(extra)


ISSUE_CASES = [
    ("conv_int8", _conv_filter_absent, "CONV_2D#0 input 1 is -1 (absent), but CONV_2D requires it"),
    ("conv_float_io", _quantize_zero_point, "zero point 200, outside [-128, 127]"),
    ("conv_float_io", _quantize_scale_zero, "quantization scale 0"),
    ("conv_float_io", _quantize_uint8, "(uint8) has zero point -128, outside [0, 255]"),
    ("conv_float_io", _quantize_uint8_in_range, "weights"),
    ("conv_float_io", _rank_64_input, "has 64 dimensions"),
    ("conv_int8", _unknown_builtin, "builtin code 250, which this TFLite schema does not know"),
    ("conv_int8", _inconsistent_deprecated_code, "deprecated builtin code 3"),
    ("conv_int8", _rank_0_input, "is scalar, a 4-D tensor expected"),
    ("conv_int8", _huge_dimension, "but the op computes 1x1048574x6x4"),
    ("conv_int8", _input_4_gib, "would take 4,294,967,296 bytes"),
    ("conv_int8", _softmax_beta, "beta = -1.0; Softmax needs beta > 0"),
    ("conv_int8", _softmax_tiny_beta, "too small for the int8 kernel"),
    ("conv_int8", _custom_code_not_utf8, "custom code is not UTF-8"),
    ("conv_int8", _tensor_name_not_utf8, "name is not UTF-8"),
    ("conv_int8", _input_lacks_data, "reads tensor 7"),
    ("conv_int8", _no_operators, "is not produced by any op"),
    ("dense_int8", _fc_without_outputs, "FULLY_CONNECTED#1 has 0 output(s), 1 to 2 expected"),
    ("conv_int8", _sparse_weights, "(int8, sparse) needs 3"),
    ("conv_int8", _sparse_index_out_of_range, "invalid sparsity parameters"),
    ("conv_int8", _subgraph_calls_itself, "cycle"),
]


def _one_error_line(capsys, argv) -> str:
    code = cli_main(argv)
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip() and not ln.startswith("tfcompress: ")]
    assert code == 1 and len(lines) == 1 and ": error: " in lines[0], (argv, code, captured.err)
    assert "Traceback" not in captured.err and "--verbose for the traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("base, mutate, message", ISSUE_CASES, ids=[c[1].__name__.strip("_") for c in ISSUE_CASES])
def test_issue_case_is_one_clear_error_everywhere(tiny, tmp_path, capsys, base, mutate, message):
    data = _edit(tiny[base], mutate)
    verify_flatbuffer(data)  # structurally valid: the semantic verifier must catch it
    with pytest.raises(InvalidModelFileError) as caught:
        load_tflite(data)
    assert message in str(caught.value), str(caught.value)
    path = tmp_path / "mutant.tflite"
    path.write_bytes(data)
    for argv in (["inspect", str(path), "--json"], ["edgetpu", str(path), "--static"],
                 ["bench", str(path), "--runs", "2", "--warmup", "0"], ["micro", str(path), "-o", str(tmp_path / "m")]):
        assert message in _one_error_line(capsys, argv)
    from tfcompress.export import evaluate

    with pytest.raises(InvalidModelFileError, match=re.escape(message)):
        evaluate(path, np.zeros((1, 8, 8, 1), np.float32), np.zeros(1))
    assert not (tmp_path / "m").exists()


def test_builtin_codes_written_without_the_deprecated_code_work(tiny, tmp_path, capsys):
    """A writer that sets only builtin_code (deprecated_builtin_code left at 0): the interpreters
    read max(builtin, deprecated), so the file is valid and runs everywhere."""
    def only_new_codes(m):
        for code in m.operatorCodes:
            code.deprecatedBuiltinCode = 0

    path = tmp_path / "codes.tflite"
    path.write_bytes(_edit(tiny["conv_int8"], only_new_codes))
    assert load_tflite(path).op_counts() == {"CONV_2D": 1, "RESHAPE": 1, "FULLY_CONNECTED": 1, "SOFTMAX": 1}
    assert cli_main(["micro", str(path), "-o", str(tmp_path / "m"), "--quiet", "--in-process"]) == 0
    assert "IDENTICAL" in capsys.readouterr().out


def _raw_sites(data: bytes):
    return fuzzing.edit_sites(data)


def test_shifted_vtable_and_misaimed_operator_offset_are_rejected(tiny, tmp_path, capsys):
    data = tiny["conv_int8"]
    sites = _raw_sites(data)
    operator = next(s for s in sites if s.kind == "soffset" and s.path == "subgraphs[0].operators[0]")
    tensor = next(s for s in sites if s.kind == "table" and s.path == "subgraphs[0].tensors[1]")
    pointer = next(s for s in sites if s.kind == "uoffset" and s.path == "subgraphs[0].operators[1]")
    mutants = {}
    for shift in (-4, 2, 4, 8, 100):
        edited = bytearray(data)
        old = struct.unpack_from("<i", data, operator.pos)[0]
        struct.pack_into("<i", edited, operator.pos, old + shift)
        mutants[f"vtable{shift:+d}"] = bytes(edited)
    edited = bytearray(data)
    struct.pack_into("<I", edited, pointer.pos, tensor.pos - pointer.pos)
    mutants["operator -> tensor table"] = bytes(edited)
    for label, mutant in mutants.items():
        with pytest.raises(InvalidModelFileError):
            load_tflite(mutant)
        path = tmp_path / "m.tflite"
        path.write_bytes(mutant)
        line = _one_error_line(capsys, ["micro", str(path), "-o", str(tmp_path / "out")])
        assert "mutant" not in line and str(path) in line, (label, line)


def _alias_buffers(data: bytes, copies: int, size: int) -> bytes:
    """The model with ``copies`` extra Buffer tables whose data all point at one ``size``-byte vector."""
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    builder = flatbuffers.Builder(1 << 20)
    shared = builder.CreateNumpyVector(np.ones(size, np.uint8))
    tables = [b.Pack(builder) for b in model.buffers]
    for _ in range(copies):
        fb_schema.BufferStart(builder)
        fb_schema.BufferAddData(builder, shared)
        tables.append(fb_schema.BufferEnd(builder))
    fb_schema.ModelStartBuffersVector(builder, len(tables))
    for t in reversed(tables):
        builder.PrependUOffsetTRelative(t)
    buffers = builder.EndVector()
    codes = [c.Pack(builder) for c in model.operatorCodes]
    fb_schema.ModelStartOperatorCodesVector(builder, len(codes))
    for c in reversed(codes):
        builder.PrependUOffsetTRelative(c)
    codes_vector = builder.EndVector()
    graphs = [g.Pack(builder) for g in model.subgraphs]
    fb_schema.ModelStartSubgraphsVector(builder, len(graphs))
    for g in reversed(graphs):
        builder.PrependUOffsetTRelative(g)
    graphs_vector = builder.EndVector()
    fb_schema.ModelStart(builder)
    fb_schema.ModelAddVersion(builder, 3)
    fb_schema.ModelAddOperatorCodes(builder, codes_vector)
    fb_schema.ModelAddSubgraphs(builder, graphs_vector)
    fb_schema.ModelAddBuffers(builder, buffers)
    builder.Finish(fb_schema.ModelEnd(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_aliased_buffers_are_rejected_in_linear_time_and_memory(tiny):
    """100,000 Buffer tables pointing at one 64 KiB vector: 6.5 GB for a reader that copies each."""
    from tfcompress.export.isolation import run_isolated

    data = _alias_buffers(tiny["conv_int8"], 100_000, 64 * 1024)
    assert len(data) < 1_300_000
    started = time.perf_counter()
    with pytest.raises(InvalidModelFileError, match="points many offsets at the same data"):
        # in a child limited to 1 GiB of address space: a copy per buffer would be a MemoryError
        run_isolated("tfcompress.export.tflite_file:validate_tflite", (data,), where="<aliased>",
                     memory_limit=2**30, timeout=60)
    assert time.perf_counter() - started < 30


def test_tensors_sharing_one_buffer_are_limited(tiny):
    """Tensors (distinct tables) that all name one 64 KiB buffer: the constant bytes they reach."""
    def share(m):
        shared = fb_schema.BufferT()
        shared.data = np.ones(64 * 1024, np.uint8)
        m.buffers.append(shared)
        for k in range(2000):
            t = fb_schema.TensorT()
            t.shape, t.type, t.name = np.array([64 * 1024], np.int32), fb_schema.TensorType.INT8, f"s{k}".encode()
            t.buffer = len(m.buffers) - 1
            m.subgraphs[0].tensors.append(t)

    data = _edit(tiny["conv_int8"], share)
    with pytest.raises(InvalidModelFileError, match="constant data through shared buffers"):
        load_tflite(data)


def _quantize_many(data: bytes, count: int) -> bytes:
    """conv_float_io's QUANTIZE repeated: ``count`` float inputs, each quantized by its own op."""
    def widen(m):
        main = m.subgraphs[0]
        float_in, int8_out = main.tensors[0], main.tensors[5]
        quantize = main.operators[0]
        tensors = []
        for k in range(count):
            for template, name in ((float_in, f"in{k}"), (int8_out, f"q{k}")):
                t = fb_schema.TensorT()
                t.type, t.name, t.buffer, t.quantization = template.type, name.encode(), 0, template.quantization
                t.shape = np.array([1, 4], np.int32)
                tensors.append(t)
        ops = []
        for k in range(count):
            op = copy.copy(quantize)
            op.inputs, op.outputs = np.array([2 * k], np.int32), np.array([2 * k + 1], np.int32)
            ops.append(op)
        main.tensors, main.operators = tensors, ops
        main.inputs = np.arange(0, 2 * count, 2, dtype=np.int32)
        main.outputs = np.arange(1, 2 * count, 2, dtype=np.int32)

    return _edit(data, widen)


def test_outputs_listed_25000_times_are_rejected_at_once(tiny, tmp_path, capsys):
    """The 210 KB file of the issue: DEQUANTIZE listing 25,000 outputs and the model 25,000 outputs
    made `inspect` rebuild the set of model outputs for every output tested (25,000^2 steps; the
    reader before the verifier took 49 s on this file)."""
    def repeat(m):
        main = m.subgraphs[0]
        main.outputs = np.full(25_000, 10, np.int32)
        main.operators[5].outputs = np.full(25_000, 9, np.int32)

    path = tmp_path / "repeated.tflite"
    path.write_bytes(_edit(tiny["conv_float_io"], repeat))
    assert 200_000 < path.stat().st_size < 220_000
    for command in ("inspect", "edgetpu"):
        started = time.perf_counter()
        line = _one_error_line(capsys, [command, str(path)])
        assert "DEQUANTIZE#5 has 25000 output(s), 1 expected" in line
        assert time.perf_counter() - started < 10


def test_many_quantize_ops_inspect_in_linear_time(tiny, tmp_path, capsys):
    """A valid model with 3,000 inputs, each quantized by its own op, through `inspect --json`."""
    count = 3000
    path = tmp_path / "many.tflite"
    path.write_bytes(_quantize_many(tiny["conv_float_io"], count))
    started = time.perf_counter()
    assert cli_main(["inspect", str(path), "--json"]) == 0
    seconds = time.perf_counter() - started
    summary = json.loads(capsys.readouterr().out)
    assert summary["ops"] == {"QUANTIZE": count} and summary["float_ops"] == []  # all boundary ops
    assert len(summary["edgetpu"]["ops"]) == count
    assert seconds < 20, seconds

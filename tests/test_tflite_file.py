"""A malformed .tflite is rejected before any interpreter sees it, never a crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from tfcompress.errors import InvalidModelFileError
from tfcompress.export.tflite_file import gzip_size, load_tflite


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

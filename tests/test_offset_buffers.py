"""Buffers stored after the flatbuffer by offset (issue 22): load_tflite / inspect report them,
to_micro refuses them, inline_buffers moves them inside; inspect counts int4 tensors.

ai-edge-quantizer is not installed here, so the file is made as its model_modifier.py does:
every buffer of 1 KiB or more (here 256 KiB + 40 KiB + 16 KiB of a 64-4096-10 int8 MLP)
cleared to offset = size = 1, the flatbuffer packed, then each buffer's bytes appended at a
16-byte aligned offset and the real offset / size written in."""

from __future__ import annotations

import json

import flatbuffers
import numpy as np
import pytest

from tfcompress.cli import main
from tfcompress.export import inline_buffers, load_tflite, offset_buffers, to_micro, to_tflite
from tfcompress.export.micro import OffsetBuffersError, make_tflm_interpreter
from tfcompress.export.runtime import ModelRunner


def _pack(tree) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _store_by_offset(data: bytes, min_size: int = 1024) -> tuple[bytes, dict[int, int]]:
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    moved = {}
    for i, buf in enumerate(tree.buffers):
        if buf.data is not None and len(buf.data) >= min_size:
            moved[i] = np.asarray(buf.data, dtype=np.uint8).tobytes()
            buf.data, buf.offset, buf.size = None, 1, 1
    head = _pack(tree)
    tail, start = bytearray(), (len(head) + 15) // 16 * 16
    for i, raw in moved.items():
        tree.buffers[i].offset, tree.buffers[i].size = start + len(tail), len(raw)
        tail += raw + b"\0" * (-len(raw) % 16)
    final = _pack(tree)
    assert len(final) == len(head)  # the same fields, now with real values
    return final + b"\0" * (start - len(final)) + bytes(tail), {i: len(raw) for i, raw in moved.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(4096, activation="relu"), keras.layers.Dense(10)])
    x = np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32)
    root = tmp_path_factory.mktemp("offset")
    inside = root / "inside.tflite"
    to_tflite(model, inside, "int8", representative_data=x, dense_as_conv=True)  # bit-exact on TFLM
    data, moved = _store_by_offset(inside.read_bytes())
    (root / "offset.tflite").write_bytes(data)
    return root, x[:8], moved


def _ref_outputs(path, x):
    runner = ModelRunner(path, reference_kernels=True)
    return np.concatenate([runner.invoke_raw([runner.quantize_input(row[None])])[0] for row in x])


def test_load_tflite_reports_buffers_stored_by_offset(files):
    root, x, moved = files
    assert sum(moved.values()) >= 256 * 1024 and len(moved) == 3
    model, inside = load_tflite(root / "offset.tflite"), load_tflite(root / "inside.tflite")
    assert inside.external_buffers == {} and inside.summary()["offset_buffers"] == 0
    assert {i: size for i, (_, size) in model.external_buffers.items()} == moved
    summary = model.summary()
    assert summary["offset_buffers"] == 3 and summary["offset_buffer_bytes"] == sum(moved.values())
    stored = offset_buffers(model)
    assert [b.index for b in stored] == sorted(moved) and all(b.offset % 16 == 0 for b in stored)
    # each buffer names the tensors stored in it (the weights' names vary with TF version and test order)
    for b in stored:
        assert list(b.tensors) == [t.name for t in model.tensors[0] if t.buffer == b.index] != []
    assert model.weight_stats() == inside.weight_stats()
    # LiteRT reads the data where the offsets say: the same int8 outputs
    np.testing.assert_array_equal(_ref_outputs(root / "offset.tflite", x), _ref_outputs(root / "inside.tflite", x))


def test_tflite_micro_misreads_them_and_to_micro_refuses(files):
    root, x, moved = files
    path = root / "offset.tflite"
    # why the refusal: TFLM runs the file without its weights (this tflite-micro build)
    tflm = make_tflm_interpreter(path.read_bytes(), 1 << 22)
    runner = ModelRunner(path, reference_kernels=True)
    q = runner.quantize_input(x[:1])
    tflm.set_input(q, 0)
    tflm.invoke()
    assert not np.array_equal(tflm.get_output(0), runner.invoke_raw([q])[0])
    with pytest.raises(OffsetBuffersError) as info:
        to_micro(path, root / "fw")
    message = str(info.value)
    assert all(f"buffer {i} ({size:,} bytes" in message for i, size in moved.items())
    assert "inline_buffers" in message and info.value.buffers == offset_buffers(load_tflite(path))
    assert not (root / "fw").exists()


def test_inline_buffers_gives_a_file_tflm_runs_bit_exactly(files):
    root, x, _ = files
    model = inline_buffers(root / "offset.tflite", root / "inlined.tflite")
    assert model.external_buffers == {} and model.weight_stats() == load_tflite(root / "inside.tflite").weight_stats()
    base = np.frombuffer(model.data, np.uint8).ctypes.data
    assert all((np.frombuffer(raw, np.uint8).ctypes.data - base) % 16 == 0 for raw in model._buffers.values())
    np.testing.assert_array_equal(_ref_outputs(root / "inlined.tflite", x), _ref_outputs(root / "inside.tflite", x))
    report = to_micro(root / "inlined.tflite", root / "fw_inlined", samples=x)
    assert report.identical and report.max_diff_reference == 0


def test_inspect_counts_offset_buffers_and_int4_tensors(files, capsys):
    from ai_edge_litert import schema_py_generated as schema

    root, _, moved = files
    assert main(["inspect", str(root / "offset.tflite")]) == 0
    assert f"offset buffers 3 stored after the flatbuffer, {sum(moved.values()):,} bytes" in capsys.readouterr().out
    assert main(["micro", str(root / "offset.tflite"), "-o", str(root / "fw_cli")]) == 1
    assert "stored after the flatbuffer by offset" in capsys.readouterr().err
    # the 10 x 4096 weights as int4 (two values a byte, low nibble first)
    tree = schema.ModelT.InitFromPackedBuf(bytearray((root / "inside.tflite").read_bytes()), 0)
    weights = next(t for t in tree.subgraphs[0].tensors if list(t.shape) == [10, 1, 1, 4096])
    nibbles = np.clip(np.asarray(tree.buffers[weights.buffer].data).view(np.int8), -8, 7).astype(np.uint8) & 0xF
    tree.buffers[weights.buffer].data = nibbles[0::2] | (nibbles[1::2] << 4)
    weights.type = schema.TensorType.INT4
    (root / "int4.tflite").write_bytes(_pack(tree))
    assert main(["inspect", str(root / "int4.tflite"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["int4_tensors"] == 1 and summary["offset_buffers"] == 0
    assert main(["inspect", str(root / "int4.tflite")]) == 0
    assert "int4 tensors   1" in capsys.readouterr().out

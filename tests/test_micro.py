"""to_micro: C sources, the tensor arena measured on the real TFLM interpreter, TFLM vs LiteRT."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tflite_micro.python.tflite_micro import runtime as tflm

from tfcompress.errors import InvalidModelFileError, TfcompressError
from tfcompress.export.convert import to_tflite
from tfcompress.export.micro import (
    TFLM_OPS,
    MicroError,
    MicroVerificationError,
    UnsupportedOpError,
    make_samples,
    per_op_differences,
    to_micro,
)
from tfcompress.export.tflite_file import load_tflite

L = keras.layers


def _lenet_like():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(4, 5, activation="relu"),
            L.MaxPooling2D(),
            L.Conv2D(8, 5, activation="relu"),
            L.MaxPooling2D(),
            L.Flatten(),
            L.Dense(16, activation="relu"),
            L.Dense(10),
        ],
        name="lenet_like",
    )


def _functional():
    """Residual Add, Concatenate, DepthwiseConv2D, BN, GAP, sigmoid, hard-swish, softmax."""
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same")(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    y = L.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = L.Add()([x, y])
    gate = L.Conv2D(8, 1, activation="sigmoid")(x)
    swish = L.Conv2D(8, 1, activation="hard_swish")(x)
    x = L.Concatenate()([x, gate, swish])
    x = L.AveragePooling2D(2)(x)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Softmax()(L.Dense(5)(x))
    return keras.Model(inputs, outputs, name="functional")


@pytest.fixture(scope="module")
def models(tmp_path_factory, synthetic_data):
    keras.utils.set_random_seed(0)
    x_train = synthetic_data[0]
    root = tmp_path_factory.mktemp("micro_models")
    lenet = _lenet_like()
    paths = {
        "int8": root / "lenet_int8.tflite",
        "float32": root / "lenet_float32.tflite",
        "functional": root / "functional_int8.tflite",
    }
    to_tflite(lenet, paths["int8"], "int8", representative_data=x_train[:100])
    to_tflite(lenet, paths["float32"], None)
    calib = np.random.default_rng(0).uniform(0, 1, (100, 12, 12, 3)).astype(np.float32)
    to_tflite(_functional(), paths["functional"], "int8", representative_data=calib)
    return paths


@pytest.fixture(scope="module")
def lenet_export(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("micro_out") / "lenet"
    report = to_micro(models["int8"], out, "lenet")
    return report, out


def _parse_array(cc_text: str, name: str) -> bytes:
    body = re.search(rf"const unsigned char {name}_model_data\[\] = \{{(.*?)\}};", cc_text, re.S)
    assert body is not None
    return bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body.group(1)))


def test_data_files_hold_the_exact_model_bytes(models, lenet_export):
    report, out = lenet_export
    data = models["int8"].read_bytes()
    names = ["lenet_model_data.h", "lenet_model_data.cc", "lenet_op_resolver.h", "lenet_report.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert report.files == [str(out / n) for n in names]

    cc = (out / "lenet_model_data.cc").read_text()
    assert _parse_array(cc, "lenet") == data
    assert f"const unsigned int lenet_model_data_len = {len(data)};" in cc
    assert "alignas(16) const unsigned char lenet_model_data[]" in cc
    assert '#include "lenet_model_data.h"' in cc
    rows = re.findall(r"^  (0x.*?),?$", cc, re.M)
    assert all(len(r.split(", ")) == 12 for r in rows[:-1]) and 1 <= len(rows[-1].split(", ")) <= 12

    header = (out / "lenet_model_data.h").read_text()
    sha = hashlib.sha256(data).hexdigest()
    assert sha in header and f"{len(data)} bytes" in header and "lenet_int8.tflite" in header
    assert "#ifndef TFCOMPRESS_LENET_MODEL_DATA_H_" in header and "#endif" in header
    assert "extern const unsigned char lenet_model_data[];" in header
    assert "extern const unsigned int lenet_model_data_len;" in header
    assert report.model_size_bytes == len(data) and report.model_sha256 == sha

    saved = json.loads((out / "lenet_report.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))


def test_sources_are_reproducible(models, lenet_export, tmp_path):
    _, out = lenet_export
    to_micro(models["int8"], tmp_path / "again", "lenet")
    for name in ("lenet_model_data.h", "lenet_model_data.cc", "lenet_op_resolver.h"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_data_files_compile_link_and_hold_the_model(models, lenet_export, tmp_path):
    _, out = lenet_export
    data = models["int8"].read_bytes()
    main = tmp_path / "main.cc"
    # A second translation unit: checks external linkage, length, alignment and a checksum.
    main.write_text(
        '#include <cstdint>\n#include <cstdio>\n#include "lenet_model_data.h"\n'
        "int main() {\n"
        "  unsigned long long sum = 0;\n"
        "  for (unsigned int i = 0; i < lenet_model_data_len; ++i) sum = sum * 31 + lenet_model_data[i];\n"
        '  std::printf("%u %llu %d\\n", lenet_model_data_len, sum,\n'
        "              (int)(reinterpret_cast<std::uintptr_t>(lenet_model_data) % 16));\n"
        "  return 0;\n}\n"
    )
    exe = tmp_path / "check"
    for source in (out / "lenet_model_data.cc", main):
        subprocess.run(
            ["g++", "-std=c++17", "-Wall", "-Werror", "-c", str(source), "-I", str(out),
             "-o", str(tmp_path / (source.stem + ".o"))],
            check=True, capture_output=True,
        )
    subprocess.run(
        ["g++", str(tmp_path / "lenet_model_data.o"), str(tmp_path / "main.o"), "-o", str(exe)],
        check=True, capture_output=True,
    )
    length, checksum, misalignment = subprocess.run(
        [str(exe)], check=True, capture_output=True, text=True
    ).stdout.split()
    expected = 0
    for b in data:
        expected = (expected * 31 + b) % (1 << 64)
    assert int(length) == len(data) and int(checksum) == expected and int(misalignment) == 0


def _ops_seen_by_litert(path) -> set[str]:
    interpreter = Interpreter(model_path=str(path))
    return {op["op_name"] for op in interpreter._get_ops_details()}


@pytest.mark.parametrize("which", ["int8", "functional"])
def test_op_resolver_registers_exactly_the_models_ops(models, tmp_path, which):
    report = to_micro(models[which], tmp_path, "net", num_samples=2)
    text = (tmp_path / "net_op_resolver.h").read_text()
    ops = _ops_seen_by_litert(models[which])  # an independent reading of the op set
    calls = re.findall(r"resolver\.(Add\w+)\(\)", text)
    assert sorted(calls) == sorted(TFLM_OPS[op] for op in ops)
    assert len(calls) == len(set(calls))
    assert f"constexpr unsigned int kOpCount = {len(ops)};" in text
    assert "using OpResolver = tflite::MicroMutableOpResolver<kOpCount>;" in text
    assert '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"' in text
    assert f"constexpr size_t kTensorArenaSize = {report.recommended_arena_bytes};" in text
    assert report.resolver_size == len(ops) and sorted(report.ops) == sorted(ops)
    if which == "functional":
        expected = {"ADD", "CONCATENATION", "DEPTHWISE_CONV_2D", "MEAN", "SOFTMAX", "LOGISTIC", "HARD_SWISH"}
        assert expected <= ops
        assert {"AddDepthwiseConv2D", "AddConcatenation", "AddMean", "AddHardSwish"} <= set(calls)


def _run_tflm_with_arena(data: bytes, arena: int, x: np.ndarray) -> np.ndarray:
    interpreter = tflm.Interpreter.from_bytes(data, arena_size=arena)
    interpreter.set_input(x, 0)
    interpreter.invoke()
    return np.array(interpreter.get_output(0))


def test_measured_arena_is_what_tflm_needs(models, lenet_export):
    report, _ = lenet_export
    data = models["int8"].read_bytes()
    total = report.arena_total_bytes
    assert total > 0 and report.arena_head_bytes > 0 and report.arena_tail_bytes > 0
    assert report.arena_head_bytes + report.arena_tail_bytes == total
    assert report.arena_bytes == total
    margin = report.arena_margin_bytes
    assert report.recommended_arena_bytes % 16 == 0
    assert total + margin <= report.recommended_arena_bytes < total + margin + 16

    x = np.random.default_rng(1).integers(-128, 128, (1, 28, 28, 1)).astype(np.int8)
    reference = _run_tflm_with_arena(data, 4 * total, x)
    # The measured size (+ the 16-byte alignment margin) runs and gives the same output ...
    np.testing.assert_array_equal(_run_tflm_with_arena(data, total + 16, x), reference)
    np.testing.assert_array_equal(_run_tflm_with_arena(data, report.recommended_arena_bytes, x), reference)
    # ... and a clearly smaller arena does not.
    for too_small in (total // 2, total - 256):
        with pytest.raises(RuntimeError):
            _run_tflm_with_arena(data, too_small, x)


def _litert_reference(path, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF
    )
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_lenet_int8_tflm_identical_to_litert_reference(models, lenet_export):
    report, _ = lenet_export
    assert report.identical is True
    assert report.diff_unit == "LSB" and report.max_diff_reference == 0
    assert report.samples_compared == 8 and report.output_dtype == "int8"
    assert report.op_differences == []
    assert "xnnpack" in report.default_kernels and report.max_diff_default >= 0
    assert report.max_abs_error_reference == 0.0
    text = report.text()
    assert "IDENTICAL" in text and "MicroMutableOpResolver<4>" in text
    assert str(report.arena_total_bytes) in text

    # The same comparison, done here directly on both interpreters with fresh inputs.
    data = models["int8"].read_bytes()
    rng = np.random.default_rng(7)
    outputs = []
    for _ in range(4):
        x = rng.integers(-128, 128, (1, 28, 28, 1)).astype(np.int8)
        tflm_out = _run_tflm_with_arena(data, report.recommended_arena_bytes, x)
        np.testing.assert_array_equal(tflm_out, _litert_reference(models["int8"], x))
        outputs.append(tflm_out)
    assert len({o.tobytes() for o in outputs}) > 1  # the inputs really exercise the model


def test_functional_int8_identical_with_user_samples(models, tmp_path):
    x = np.random.default_rng(3).uniform(0, 1, (5, 12, 12, 3)).astype(np.float32)
    report = to_micro(models["functional"], tmp_path, "fn", samples=x, strict=True)
    assert report.identical and report.samples_compared == 5 and report.max_diff_reference == 0


def test_user_samples_are_quantized_with_the_input_parameters(models):
    model = load_tflite(models["int8"])
    q = model.inputs[0].quantization
    scale, zero_point = q.scales[0], q.zero_points[0]
    x = np.random.default_rng(4).uniform(-0.5, 1.5, (3, 28, 28, 1)).astype(np.float32)
    runs = make_samples(model, x, num_samples=99, seed=0)
    assert len(runs) == 3
    for k, run in enumerate(runs):
        expected = np.clip(np.floor(x[k : k + 1] / scale + 0.5) + zero_point, -128, 127)
        # round-half-even vs half-up only differ exactly on .5 ties, which uniform floats miss
        np.testing.assert_array_equal(run[0].astype(np.int64), expected.astype(np.int64))
        assert run[0].dtype == np.int8 and run[0].shape == (1, 28, 28, 1)


def test_random_samples_span_the_input_range(models):
    model = load_tflite(models["int8"])
    runs = make_samples(model, None, num_samples=3, seed=0)
    values = np.concatenate([r[0].ravel() for r in runs])
    assert values.dtype == np.int8 and values.min() <= -120 and values.max() >= 120
    again = make_samples(model, None, num_samples=3, seed=0)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(runs, again, strict=True))


def test_float32_model(models, tmp_path):
    report = to_micro(models["float32"], tmp_path, "lenet_f32", num_samples=3)
    assert report.identical and report.diff_unit == "abs" and report.output_dtype == "float32"
    assert report.max_abs_error_reference <= 1e-5
    assert report.max_abs_error_default < 1e-3
    assert report.arena_total_bytes > 0
    assert (tmp_path / "lenet_f32_model_data.cc").exists()


def test_per_op_differences_name_the_first_op_that_differs(models):
    model = load_tflite(models["int8"])
    runs = make_samples(model, None, num_samples=2, seed=5)
    # Same inputs: every intermediate tensor of TFLM equals LiteRT's reference kernels.
    assert per_op_differences(model, runs) == []
    # A patch of the second input changed for the reference only: the first conv sees it.
    perturbed = [[a.copy() for a in run] for run in runs]
    patch = perturbed[1][0][0, 10:16, 10:16, 0].astype(np.int16) + 60
    perturbed[1][0][0, 10:16, 10:16, 0] = np.clip(patch, -128, 127).astype(np.int8)
    diffs = per_op_differences(model, runs, perturbed)
    assert diffs, "a changed input must show up in the first conv's output"
    first = diffs[0]
    assert first.first and first.op == "CONV_2D" and first.index == 0
    assert first.max_lsb is not None and first.max_lsb >= 1
    assert re.fullmatch(r"CONV_2D#0: max \|diff\| = \d+ LSB \(first to differ\)", str(first))
    assert [d.first for d in diffs].count(True) == 1


def test_strict_error_names_the_ops(models, lenet_export):
    report, _ = lenet_export
    model = load_tflite(models["int8"])
    runs = make_samples(model, None, num_samples=1, seed=5)
    perturbed = [[np.clip(run[0].astype(np.int16) + 40, -128, 127).astype(np.int8)] for run in runs]
    diffs = per_op_differences(model, runs, perturbed)
    failed = dataclasses.replace(report, identical=False, op_differences=diffs, max_diff_reference=3)
    error = MicroVerificationError(failed)
    assert isinstance(error, TfcompressError)
    assert "CONV_2D#0" in str(error) and "3 LSB" in str(error)
    assert "ops whose outputs differ" in failed.text() and "DIFFERENT" in failed.text()


@pytest.mark.parametrize("name", ["1model", "my-model", "", "int", "class", "__x", "a b"])
def test_bad_name_is_rejected(models, tmp_path, name):
    with pytest.raises(MicroError, match="name"):
        to_micro(models["int8"], tmp_path / "out", name)
    assert not (tmp_path / "out").exists()


def test_invalid_tflite_rejected_before_tflm(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\xff" * 40)
    with pytest.raises(InvalidModelFileError):
        to_micro(bad, tmp_path / "out", "m")
    missing = tmp_path / "missing.tflite"
    with pytest.raises(InvalidModelFileError, match="file not found"):
        to_micro(missing, tmp_path / "out", "m")
    assert not (tmp_path / "out").exists()


def test_out_dir_parent_must_exist(models, tmp_path):
    with pytest.raises(MicroError, match="parent"):
        to_micro(models["int8"], tmp_path / "no" / "such" / "dir", "m")


def test_unsupported_op_is_named_and_nothing_written(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    outputs = L.Activation("gelu")(L.Conv2D(2, 3)(inputs))
    path = tmp_path / "gelu.tflite"
    calib = np.random.default_rng(0).uniform(0, 1, (20, 8, 8, 1)).astype(np.float32)
    to_tflite(keras.Model(inputs, outputs), path, "int8", representative_data=calib)
    assert "GELU" in load_tflite(path).op_counts()
    with pytest.raises(UnsupportedOpError, match="GELU") as info:
        to_micro(path, tmp_path / "out", "m")
    assert info.value.ops == ["GELU"]
    assert not (tmp_path / "out").exists()


def test_tflm_rejecting_a_model_is_a_clear_error(tmp_path):
    # Dynamic-range (hybrid) kernels do not exist in TFLM: it fails in Prepare, and says why.
    path = tmp_path / "dynamic.tflite"
    to_tflite(_lenet_like(), path, "dynamic")
    with pytest.raises(MicroError, match="FULLY_CONNECTED|CONV_2D"):
        to_micro(path, tmp_path / "out", "m")
    assert not (tmp_path / "out").exists()


def test_no_partial_files_when_a_file_cannot_be_written(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lenet_op_resolver.h").mkdir()  # a directory where a file must go
    with pytest.raises(MicroError, match="lenet_op_resolver.h"):
        to_micro(models["int8"], out, "lenet", num_samples=1)
    assert [p.name for p in out.iterdir()] == ["lenet_op_resolver.h"]


def test_bad_samples(models, tmp_path):
    with pytest.raises(MicroError, match="do not fit"):
        to_micro(models["int8"], tmp_path / "o", "m", samples=np.zeros((2, 28, 28, 3), np.float32))
    with pytest.raises(MicroError, match="NaN"):
        to_micro(models["int8"], tmp_path / "o", "m", samples=np.full((1, 28, 28, 1), np.nan, np.float32))
    with pytest.raises(MicroError, match="num_samples"):
        to_micro(models["int8"], tmp_path / "o", "m", num_samples=0)
    assert not (tmp_path / "o").exists()


def test_lenet5_caffe_int8_passes_the_tflm_check(lenet_int8_path, tmp_path):
    """The issue's LeNet-5-Caffe (20-50-500-10), not a cut-down copy: TFLM equals LiteRT's
    reference kernels bit for bit, and the arena is measured by the TFLM interpreter."""
    report = to_micro(lenet_int8_path, tmp_path / "fw", name="lenet", strict=True)
    assert report.identical and report.max_diff_reference == 0, report.text()
    assert report.samples_compared >= 1
    assert sorted(report.ops) == ["CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "RESHAPE"]
    # the arena holds at least the largest activation pair: conv1's 24x24x20 int8 output and its
    # 28x28 input (TFLM plans the two together)
    assert report.arena_total_bytes >= 24 * 24 * 20 + 28 * 28
    assert report.recommended_arena_bytes >= report.arena_total_bytes
    source = (tmp_path / "fw" / "lenet_model_data.cc").read_text()
    assert f"const unsigned int lenet_model_data_len = {lenet_int8_path.stat().st_size};" in source
    assert "alignas(16) const unsigned char lenet_model_data[]" in source

"""int16x8, int4 weights, per-layer precision and quantizing a float .tflite (issue 22).

Real TF converter / calibrator, ai-edge-quantizer, LiteRT and TFLite Micro on tiny models; numbers
checked against NumPy computations from the file's own quantized values.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tfcompress.errors import ConversionError, InvalidModelFileError  # noqa: E402
from tfcompress.export import load_tflite, to_micro, to_tflite  # noqa: E402
from tfcompress.export.micro import TFLM_INT16_REFUSED, UnsupportedOpError, make_tflm_interpreter  # noqa: E402
from tfcompress.export.precision import PrecisionError, quantize_tflite  # noqa: E402
from tfcompress.export.runtime import ModelRunner  # noqa: E402


def _cnn():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    h = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(24, activation="relu", name="fc1")(h)
    y = keras.layers.Softmax()(keras.layers.Dense(10, name="fc2")(h))
    return keras.Model(x, y)


@pytest.fixture(scope="module")
def cnn():
    return _cnn()


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).normal(size=(48, 8, 8, 3)).astype("float32")


@pytest.fixture(scope="module")
def float_file(cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("float") / "float.tflite"
    to_tflite(cnn, path, None)
    return path


def _weight(model, op):
    return model.tensor(op.inputs[1])


def _unpack_int4(model, tensor) -> np.ndarray:
    """Two's-complement nibbles, low nibble first (TFLite's packed int4), in NumPy."""
    raw = np.frombuffer(bytes(model._buffers[tensor.buffer]), np.uint8)
    nibbles = np.stack([raw & 0x0F, raw >> 4], axis=1).reshape(-1)[: int(np.prod(tensor.shape))]
    return np.where(nibbles > 7, nibbles.astype(np.int16) - 16, nibbles).reshape(tensor.shape)


def _same_tensors(a, b):
    for ta, tb in zip(a.tensors[0], b.tensors[0], strict=True):
        assert ta.dtype == tb.dtype, ta.name
        assert (ta.quantization is None) == (tb.quantization is None), ta.name
        if ta.quantization is not None:
            np.testing.assert_allclose(ta.quantization.scales, tb.quantization.scales, rtol=1e-7)
            assert list(ta.quantization.zero_points) == list(tb.quantization.zero_points)
        va, vb = a.constant_values(ta), b.constant_values(tb)
        assert (va is None) == (vb is None)
        if va is not None:
            np.testing.assert_array_equal(va, vb)


def test_int16x8_types_numbers_litert_and_tflm(tmp_path, data):
    keras.utils.set_random_seed(1)
    x = keras.Input((12,))
    model = keras.Model(x, keras.layers.Dense(5, bias_initializer="glorot_uniform")(x))
    path = tmp_path / "fc16.tflite"
    report = to_tflite(model, path, "int16x8", representative_data=data.reshape(-1, 12)[:64])
    assert report.io_dtype == "int16" and report.inputs[0].dtype == "int16" and report.inputs[0].zero_point == 0
    parsed = load_tflite(path)
    (op,) = parsed.ops
    x_t, w_t, b_t = (parsed.tensor(i) for i in op.inputs)
    y_t = parsed.tensor(op.outputs[0])
    assert (x_t.dtype, w_t.dtype, b_t.dtype, y_t.dtype) == ("INT16", "INT8", "INT64", "INT16")
    # NumPy: the real-valued product of the file's own quantized values, requantized to int16
    xq = np.random.default_rng(2).integers(-20000, 20000, size=(1, 12)).astype(np.int16)
    s_x, s_y = x_t.quantization.scales[0], y_t.quantization.scales[0]
    w = parsed.constant_values(w_t).astype(np.float64) * np.asarray(w_t.quantization.scales)[:, None]
    b = parsed.constant_values(b_t).astype(np.float64) * np.asarray(b_t.quantization.scales)
    expected = np.clip(np.round((xq * s_x) @ w.T / s_y + b / s_y), -32768, 32767)
    for kwargs in ({"delegate": "none"}, {"reference_kernels": True}):
        got = ModelRunner(path, runtime="litert", **kwargs).invoke_raw([xq])[0]
        assert got.dtype == np.int16
        assert np.max(np.abs(got.astype(np.int64) - expected)) <= 1
    micro = to_micro(path, tmp_path / "micro", num_samples=4)
    assert micro.max_diff_reference <= 1  # TFLM's FULLY_CONNECTED rounds twice, LiteRT-ref once


def test_int16x8_cnn_agrees_with_float_and_runs_on_tflm(tmp_path, cnn, data):
    path = tmp_path / "cnn16.tflite"
    report = to_tflite(cnn, path, "int16x8", representative_data=data)
    assert report.int8_coverage == 1.0 and not report.float_ops
    int8 = to_tflite(cnn, tmp_path / "cnn8.tflite", "int8", representative_data=data)
    reference = cnn.predict(data[:16], verbose=0)
    err16 = np.max(np.abs(ModelRunner(path, reference_kernels=True).predict(data[:16]) - reference))
    err8 = np.max(np.abs(ModelRunner(int8.path, reference_kernels=True).predict(data[:16]) - reference))
    assert err16 < err8 / 4  # 256x finer activations; the int8 weights keep some error (7x here)
    micro = to_micro(path, tmp_path / "micro", samples=data[:4])
    assert micro.max_diff_reference <= 2  # the FULLY_CONNECTED rounding, carried into SOFTMAX
    # Dense layers as 1x1 CONV_2D: TFLM's int16 CONV_2D rounds as LiteRT-ref does, bit for bit
    conv = to_tflite(cnn, tmp_path / "cnn16_conv.tflite", "int16x8", representative_data=data, dense_as_conv=True)
    assert "FULLY_CONNECTED" not in conv.ops
    micro = to_micro(conv.path, tmp_path / "micro_conv", samples=data[:8])
    assert micro.identical and micro.max_diff_reference == 0


def test_int16x8_names_what_tflm_refuses(tmp_path, data, caplog):
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    model = keras.Model(x, keras.layers.GlobalMaxPooling2D()(keras.layers.Conv2D(4, 3)(x)))
    path = tmp_path / "max16.tflite"
    report = to_tflite(model, path, "int16x8", representative_data=data)
    row = report.layers.row("REDUCE_MAX x1")
    assert row.important and "TFLite Micro" in row.reason
    assert any("REDUCE_MAX" in note for note in report.notes)
    assert [r.levelname for r in caplog.records if "REDUCE_MAX" in r.getMessage()] == ["WARNING"]
    with pytest.raises(UnsupportedOpError, match="no int16 kernel for op.*REDUCE_MAX"):
        to_micro(path, tmp_path / "micro")
    # the table is a measurement: the real TFLM interpreter refuses the op in int16
    assert "REDUCE_MAX" in TFLM_INT16_REFUSED
    interpreter = make_tflm_interpreter(load_tflite(path).data, 64 * 1024)
    interpreter.set_input(np.zeros((1, 8, 8, 3), np.int16), 0)
    with pytest.raises(RuntimeError):
        interpreter.invoke()


def test_int16x8_refuses_qat_and_bad_io(tmp_path, data):
    import tfcompress

    keras.utils.set_random_seed(0)
    x = keras.Input((12,))
    qat = tfcompress.quantize(keras.Model(x, keras.layers.Dense(4)(x)), verbose=0)
    with pytest.raises(ConversionError, match="quantization-aware training to int16x8"):
        to_tflite(qat, tmp_path / "q.tflite", "int16x8", representative_data=data.reshape(-1, 12))
    with pytest.raises(Exception, match="io_dtype='int8' does not go with quantization='int16x8'"):
        to_tflite(qat, tmp_path / "q.tflite", "int16x8", io_dtype="int8")


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_quantize_tflite_equals_to_tflite(tmp_path, cnn, data, float_file, mode):
    direct = to_tflite(cnn, tmp_path / "direct.tflite", mode, representative_data=data)
    report = quantize_tflite(float_file, tmp_path / "from_file.tflite", data, mode)
    assert report.io_dtype == direct.io_dtype and report.ops == direct.ops
    _same_tensors(load_tflite(direct.path), load_tflite(report.path))
    a = ModelRunner(direct.path, reference_kernels=True).predict(data[:8])
    b = ModelRunner(report.path, reference_kernels=True).predict(data[:8])
    np.testing.assert_array_equal(a, b)


def test_quantize_tflite_refuses_bad_input(tmp_path, cnn, data, float_file):
    int8 = to_tflite(cnn, tmp_path / "int8.tflite", "int8", representative_data=data)
    with pytest.raises(InvalidModelFileError, match="already quantized"):
        quantize_tflite(int8.path, tmp_path / "again.tflite", data)
    with pytest.raises(Exception, match="shape"):
        quantize_tflite(float_file, tmp_path / "bad.tflite", data[:, :4])
    with pytest.raises(Exception, match="unknown quantization"):
        quantize_tflite(float_file, tmp_path / "bad.tflite", data, "int2")
    assert not (tmp_path / "bad.tflite").exists()


def test_int4_weights_numbers_litert_and_tflm(tmp_path, cnn, data):
    pytest.importorskip("ai_edge_quantizer")
    path = tmp_path / "int4.tflite"
    report = to_tflite(cnn, path, "int4", representative_data=data)
    parsed = load_tflite(path)
    assert parsed.summary()["int4_tensors"] == 3  # conv, fc1, fc2; the depthwise stays int8
    assert not parsed.external_buffers
    int8 = to_tflite(cnn, tmp_path / "int8.tflite", "int8", representative_data=data)
    assert report.size_bytes < int8.size_bytes
    assert any("unpacks int4" in note for note in report.notes)
    by_name = {op.name: op for op in parsed.ops}
    assert _weight(parsed, by_name["DEPTHWISE_CONV_2D"]).dtype == "INT8"
    fc2 = [op for op in parsed.ops if op.name == "FULLY_CONNECTED"][-1]
    w_t = _weight(parsed, fc2)
    assert w_t.dtype == "INT4" and len(w_t.quantization.scales) == 1  # per-tensor: what TFLM takes
    conv_w = _weight(parsed, by_name["CONV_2D"])
    assert len(conv_w.quantization.scales) == 8  # per-channel
    # NumPy: the unpacked 4-bit levels times the scale are the float kernel to half a step
    levels = _unpack_int4(parsed, w_t)
    assert levels.min() >= -8 and levels.max() <= 7 and np.abs(levels).max() == 7
    kernel = np.asarray(cnn.get_layer("fc2").kernel).T
    assert np.max(np.abs(levels * w_t.quantization.scales[0] - kernel)) <= w_t.quantization.scales[0] / 2 + 1e-7
    reference = cnn.predict(data[:16], verbose=0)
    for kwargs in ({"delegate": "none"}, {"reference_kernels": True}):
        assert np.max(np.abs(ModelRunner(path, **kwargs).predict(data[:16]) - reference)) < 0.2
    micro = to_micro(path, tmp_path / "micro", samples=data[:4])
    assert micro.max_diff_reference <= 1


def test_per_layer_precision(tmp_path, cnn, data, float_file):
    pytest.importorskip("ai_edge_quantizer")
    report = to_tflite(cnn, tmp_path / "mixed.tflite", "int8", representative_data=data, precision={"fc1": "int4"})
    parsed = load_tflite(report.path)
    int4 = [t.name for t in parsed.tensors[0] if t.dtype == "INT4"]
    assert len(int4) == 1 and "fc1" in int4[0]
    assert report.layers.row("FULLY_CONNECTED x1 int4").action == "int8 activations, int4 weights"
    assert report.layers.row("FULLY_CONNECTED x1").action == "int8"
    # the other way round: int4 everywhere but the conv
    rest = to_tflite(cnn, tmp_path / "rest.tflite", "int4", representative_data=data, precision={"conv": "int8"})
    assert load_tflite(rest.path).summary()["int4_tensors"] == 2
    # a float file's ops are named by their TFLite tensors
    fc1_out = next(load_tflite(float_file).tensor(op.outputs[0]).name for op in load_tflite(report.path).ops
                   if op.name == "FULLY_CONNECTED")
    by_file = quantize_tflite(float_file, tmp_path / "by_file.tflite", data, precision={fc1_out: "int4"})
    assert load_tflite(by_file.path).summary()["int4_tensors"] == 1
    # ai-edge-quantizer's int8, calibrated as the converter calibrates: to_tflite's int8 ranges and weights
    all8 = quantize_tflite(float_file, tmp_path / "all8.tflite", data, precision={fc1_out: "int8"})
    direct = load_tflite(to_tflite(cnn, tmp_path / "direct8.tflite", "int8", representative_data=data).path)
    ours = load_tflite(all8.path)
    for op_a, op_b in zip(direct.ops, ours.ops, strict=True):
        for i, j in zip(list(op_a.inputs) + list(op_a.outputs), list(op_b.inputs) + list(op_b.outputs), strict=True):
            if i < 0:
                continue
            ta, tb = direct.tensor(i), ours.tensor(j)
            assert ta.dtype == tb.dtype
            if ta.quantization is not None:
                np.testing.assert_allclose(ta.quantization.scales, tb.quantization.scales, rtol=1e-5)
            va, vb = direct.constant_values(ta), ours.constant_values(tb)
            if va is not None:
                assert np.max(np.abs(va.astype(np.int64) - vb.astype(np.int64))) <= 1  # a rounding tie at most
    for bad, match in (({"nope": "int4"}, "no layer named 'nope'"), ({"dw": "int4"}, "cannot take int4"),
                       ({"fc1": "int3"}, "unknown precision")):
        with pytest.raises(PrecisionError, match=match):
            to_tflite(cnn, tmp_path / "bad.tflite", "int8", representative_data=data, precision=bad)
    assert not (tmp_path / "bad.tflite").exists()


def test_int4_buffers_inside_for_tflm(tmp_path):
    """ai-edge-quantizer stores buffers after the flatbuffer once they reach 256 KiB: inlined."""
    pytest.importorskip("ai_edge_quantizer")
    keras.utils.set_random_seed(0)
    x = keras.Input((64,))
    model = keras.Model(x, keras.layers.Dense(10)(keras.layers.Dense(8192, activation="relu")(x)))
    samples = np.random.default_rng(0).normal(size=(8, 64)).astype("float32")
    report = to_tflite(model, tmp_path / "big4.tflite", "int4", representative_data=samples)
    parsed = load_tflite(report.path)
    assert any("moved" in note for note in report.notes)
    assert not parsed.external_buffers and parsed.summary()["int4_tensors"] == 2
    micro = to_micro(parsed.path, tmp_path / "micro", samples=samples[:2])
    assert micro.max_diff_reference <= 1
    # TFLM unpacks int4 weights to int8 in its arena: the activations take ~8 KB, the arena the
    # 64 x 8192 unpacked weights on top
    assert report.size_bytes < 0.6 * (64 * 8192 + 8192 * 10)
    assert micro.arena_total_bytes >= 64 * 8192


def test_int4_weight_only_dequantizes_exactly(tmp_path, cnn, data, float_file):
    pytest.importorskip("ai_edge_quantizer")
    report = quantize_tflite(float_file, tmp_path / "wo4.tflite", None, "int4_weight_only")
    parsed = load_tflite(report.path)
    assert report.io_dtype == "float32" and parsed.summary()["int4_tensors"] >= 3
    assert any("TFLite Micro" in note for note in report.notes)
    dequantize = [op for op in parsed.ops if op.name == "DEQUANTIZE"]
    assert dequantize
    runner = ModelRunner(parsed, delegate="none", preserve_all_tensors=True)
    runner.predict(data[:1])
    for op in dequantize:
        w_t = parsed.tensor(op.inputs[0])
        assert w_t.dtype == "INT4"
        scales = np.asarray(w_t.quantization.scales).reshape(-1, *([1] * (len(w_t.shape) - 1)))
        expected = _unpack_int4(parsed, w_t) * scales  # per output channel (axis 0)
        got = runner.interpreter.get_tensor(op.outputs[0])
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    # float compute on 4-bit weights: close to the float model, not equal
    error = np.max(np.abs(ModelRunner(parsed).predict(data[:16]) - cnn.predict(data[:16], verbose=0)))
    assert 0 < error < 0.2
    with pytest.raises(Exception, match="TFLite Micro could not allocate"):
        to_micro(report.path, tmp_path / "micro")
    direct = to_tflite(cnn, tmp_path / "wo4_direct.tflite", "int4_weight_only")
    assert load_tflite(direct.path).summary()["int4_tensors"] == parsed.summary()["int4_tensors"]
    assert direct.layers.row("CONV_2D x1").action == "float32 (int4 weights dequantized)"


def test_cli_quantizes_a_float_tflite(tmp_path, data, float_file, capsys):
    from tfcompress.cli import main

    np.save(tmp_path / "samples.npy", data)
    out = tmp_path / "cli16.tflite"
    assert main(["convert", str(float_file), "-o", str(out), "--int16x8", "--calibration",
                 str(tmp_path / "samples.npy"), "--quiet"]) == 0
    assert load_tflite(out).inputs[0].dtype == "INT16"
    assert "int16x8" in capsys.readouterr().out
    assert main(["convert", str(float_file), "-o", str(tmp_path / "x.tflite"), "--float16", "--quiet"]) == 1
    assert main(["convert", str(float_file), "-o", str(tmp_path / "x.tflite"), "--int8", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "not --float16" in err and "needs calibration inputs" in err
    assert main(["convert", str(float_file), "-o", str(tmp_path / "x.tflite"), "--int8", "--precision", "fc1",
                 "--calibration", str(tmp_path / "samples.npy"), "--quiet"]) == 1
    assert "NAME=PRECISION" in capsys.readouterr().err
    if importlib.util.find_spec("ai_edge_quantizer"):  # no calibration needed for weight-only int4
        assert main(["convert", str(float_file), "-o", str(tmp_path / "wo4.tflite"), "--int4-weight-only",
                     "--quiet"]) == 0
        assert load_tflite(tmp_path / "wo4.tflite").summary()["int4_tensors"] >= 3
    assert not (tmp_path / "x.tflite").exists()

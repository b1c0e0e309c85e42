"""Running .tflite files on LiteRT: (de)quantization, evaluate, agreement, delegates, bench."""

from __future__ import annotations

import numpy as np
import pytest

from tfcompress.errors import DelegateError, TfcompressError
from tfcompress.export import benchmark, evaluate
from tfcompress.export.runtime import ModelRunner, quantize


def test_quantize_matches_tflite_formula():
    x = np.array([-1.0, -0.004, 0.0, 0.0021, 0.5, 3.0], np.float32)
    q = quantize(x, np.int8, 0.004, -3)
    expected = np.clip(np.round(x / 0.004) - 3, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(q, expected)
    assert q.dtype == np.int8 and q[-1] == 127 and q[0] == -128
    assert quantize(x, np.float32, 0.0, 0).dtype == np.float32


def test_runner_matches_manual_interpreter_use(lenet_int8_path, synthetic_data):
    from ai_edge_litert.interpreter import Interpreter

    x = synthetic_data[2][:5]
    runner = ModelRunner(lenet_int8_path)
    ours = runner.predict(x)
    interpreter = Interpreter(model_path=str(lenet_int8_path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    for i in range(5):
        q = np.clip(np.round(x[i : i + 1] / s_in) + z_in, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q)
        interpreter.invoke()
        manual = (interpreter.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out
        np.testing.assert_array_equal(ours[i : i + 1], manual)


def test_evaluate_accuracy(trained_lenet, lenet_int8_path, synthetic_data):
    _, _, x_test, y_test = synthetic_data
    result = evaluate(lenet_int8_path, x_test, y_test)
    assert result.num_samples == len(y_test)
    assert result.accuracy == pytest.approx(float(np.mean(result.outputs.argmax(-1) == y_test)))
    keras_accuracy = float(np.mean(trained_lenet.predict(x_test, verbose=0).argmax(-1) == y_test))
    assert keras_accuracy > 0.5  # the fixture learned the task
    assert abs(result.accuracy - keras_accuracy) <= 0.02
    one_hot = np.eye(10)[y_test]
    assert evaluate(lenet_int8_path, x_test, one_hot).accuracy == result.accuracy
    assert result.runtime.runtime == "litert"


def test_kernels_and_delegates_agree(lenet_int8_path, synthetic_data):
    x = synthetic_data[2][:20]
    default = ModelRunner(lenet_int8_path)
    builtin = ModelRunner(lenet_int8_path, delegate="none")
    reference = ModelRunner(lenet_int8_path, reference_kernels=True)
    assert default.info.delegate.startswith("xnnpack")
    assert builtin.info.delegate == "none (builtin kernels)"
    scale = default.output_details[0]["quantization"][0]
    for other in (builtin, reference):
        # Integer kernels differ at most by rounding: a couple of LSB.
        assert np.max(np.abs(default.predict(x) - other.predict(x))) <= 2 * scale + 1e-7


def test_input_errors(lenet_int8_path, tmp_path):
    runner = ModelRunner(lenet_int8_path)
    with pytest.raises(TfcompressError, match="do not fit the model input"):
        runner.predict(np.zeros((2, 32, 32, 1), np.float32))
    with pytest.raises(DelegateError, match="libedgetpu"):
        ModelRunner(lenet_int8_path, delegate="edgetpu")
    with pytest.raises(DelegateError, match="not found"):
        ModelRunner(lenet_int8_path, delegate=str(tmp_path / "libnothing.so"))
    not_a_delegate = tmp_path / "libfake.so"
    not_a_delegate.write_bytes(b"\x7fELF not really")
    with pytest.raises(DelegateError, match="failed to load delegate"):
        ModelRunner(lenet_int8_path, delegate=str(not_a_delegate))
    with pytest.raises(TfcompressError, match="unknown runtime"):
        ModelRunner(lenet_int8_path, runtime="onnx")


def test_tflite_runtime_fallback_is_explained(lenet_int8_path):
    try:
        import tflite_runtime.interpreter  # noqa: F401
    except Exception:
        with pytest.raises(TfcompressError, match="tflite_runtime"):
            ModelRunner(lenet_int8_path, runtime="tflite_runtime")
    else:  # a device that ships tflite_runtime: it must run the model
        runner = ModelRunner(lenet_int8_path, runtime="tflite_runtime")
        assert runner.info.runtime == "tflite_runtime"


def test_benchmark_interleaved(lenet_int8_path, lenet_float_path):
    report = benchmark([lenet_float_path, lenet_int8_path], runs=30, warmup=3)
    assert [r.path for r in report.results] == [str(lenet_float_path), str(lenet_int8_path)]
    first, second = report.results
    assert first.ratio_to_first == 1.0
    assert second.ratio_to_first == pytest.approx(second.p50_ms / first.p50_ms)
    for r in report.results:
        assert r.runs == 30
        assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.throughput_per_s == pytest.approx(1e3 / r.mean_ms, rel=1e-6)
    assert "vs first" in report.text() and report.to_dict()["threads"] == 1
    with pytest.raises(TfcompressError):
        benchmark([lenet_int8_path], runs=0)
    with pytest.raises(TfcompressError):
        benchmark([])


def test_machine_info_names_the_widest_vector_extension():
    from tfcompress.export.bench import machine_info, widest_simd

    assert widest_simd("fpu sse4_2 avx avx2 fma avx512f avx512_vnni".split()) == "AVX-512"
    assert widest_simd("fpu sse4_2 avx avx2 fma".split()) == "AVX2"
    assert widest_simd("fp asimd evtstrm aes".split()) == "NEON"
    assert widest_simd(["fpu"]) == "none"
    info = machine_info()
    assert info["cpu_count"] >= 1
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith(("flags", "Features"))), None)
    except OSError:
        flags = None
    if flags is not None:  # Linux: what the kernel reports, read independently
        assert info["simd"] == widest_simd(flags.split(":", 1)[1].split())


# (input size, kernel, stride, depthwise): whether its SAME padding total is negative
_STRIDED = [((8, 3, 4, False), True), ((9, 3, 5, False), True), ((8, 3, 8, True), True), ((8, 2, 4, False), True),
            ((10, 3, 4, False), False), ((8, 1, 2, False), False), ((8, 2, 3, False), False)]


@pytest.mark.parametrize("shape, negative", _STRIDED)
def test_xnnpack_negative_same_padding_is_found_and_warned_about_where_litert_gets_it_wrong(shape, negative, tmp_path):
    import warnings

    import keras

    from tfcompress.export import load_tflite, to_tflite
    from tfcompress.export.runtime import _litert_version, xnnpack_negative_same_padding

    size, k, stride, depthwise = shape
    keras.utils.set_random_seed(0)
    layer = (keras.layers.DepthwiseConv2D(k, strides=stride, padding="same") if depthwise
             else keras.layers.Conv2D(12, k, strides=stride, padding="same"))
    model = keras.Sequential([keras.Input((size, size, 8)), layer])
    x = np.random.default_rng(0).uniform(-1, 2, (8, size, size, 8)).astype("float32")
    path = tmp_path / "strided.tflite"
    to_tflite(model, path, quantization=None)
    assert xnnpack_negative_same_padding(load_tflite(path)) == ([f"{'DEPTHWISE_' if depthwise else ''}CONV_2D#0"]
                                                                 if negative else [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = ModelRunner(path)
    warned = [w for w in caught if "computes" in str(w.message)]
    old = _litert_version(runner.info.version) < (2, 3)
    assert bool(warned) == (old and negative), [str(w.message) for w in caught]
    # the predicate is the bug: XNNPACK is off exactly where it says so, on the affected versions
    error = np.abs(runner.predict(x) - model.predict(x, verbose=0)).max()
    assert (error > 0.1) == (old and negative), error

"""Mixed int4 / int8 weights to a file-size budget (tfcompress.export.precision_search)."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

pytest.importorskip("ai_edge_quantizer")

from tfcompress.export import load_tflite, mixed_precision, quantize_tflite, to_micro, to_tflite  # noqa: E402
from tfcompress.export.precision import PrecisionError  # noqa: E402
from tfcompress.export.precision_search import choose_int4, output_noise  # noqa: E402


def _litert_outputs(path, x):
    """Float outputs of a file on LiteRT's builtin kernels, quantizing the input by hand."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=_builtin())
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for sample in x:
        value = sample[None]
        scale, zero = inp["quantization"]
        if scale:
            info = np.iinfo(inp["dtype"])
            value = np.clip(np.round(value / scale) + zero, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float64)
        scale, zero = out["quantization"]
        rows.append(((y - zero) * scale if scale else y).reshape(-1))
    return np.array(rows)


def _builtin():
    from ai_edge_litert.interpreter import OpResolverType

    return OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(3)
    x = keras.Input((10, 10, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(x)
    h = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(48, activation="relu", name="fc1")(h)
    model = keras.Model(x, keras.layers.Dense(5, name="fc2")(h))
    data = np.random.default_rng(0).normal(size=(96, 10, 10, 1)).astype("float32")
    return model, data


def test_choose_int4_is_the_least_sensitive_set_that_saves_enough():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 8))
        savings = [int(s) for s in rng.integers(1, 300, n)]
        costs = [float(c) for c in rng.random(n)]
        needed = int(rng.integers(1, sum(savings) + 1))
        chosen = choose_int4(savings, costs, needed)
        assert sum(savings[i] for i in chosen) >= needed
        best = min(sum(costs[i] for i in subset) for r in range(n + 1) for subset in itertools.combinations(range(n), r)
                   if sum(savings[i] for i in subset) >= needed)
        assert sum(costs[i] for i in chosen) == pytest.approx(best, abs=1e-12)
    with pytest.raises(PrecisionError, match="together saves 30 bytes, 31 are needed"):
        choose_int4([10, 20], [0.1, 0.2], 31)


def test_output_noise_is_mse_over_variance():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(50, 3))
    noisy = y + rng.normal(scale=0.1, size=y.shape)
    assert output_noise(noisy, y) == pytest.approx(np.mean((noisy - y) ** 2) / np.var(y, axis=0).mean(), rel=1e-9)


def test_mixed_precision_fits_the_budget_and_measures_what_it_reports(cnn, tmp_path):
    model, data = cnn
    int8 = to_tflite(model, tmp_path / "int8.tflite", "int8", data)
    report = mixed_precision(model, tmp_path / "mixed.tflite", data, fraction_of_int8=0.75, sensitivity_samples=48)
    written = (tmp_path / "mixed.tflite").stat().st_size
    assert report.target_bytes == int(np.floor(0.75 * int8.size_bytes))
    assert written == report.file_bytes <= report.target_bytes
    assert report.int8_bytes == pytest.approx(int8.size_bytes, abs=64)
    ops = [row["op"].split("#")[0] for row in report.layers]
    assert ops == ["CONV_2D", "CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert any(row["int4"] for row in report.layers)
    int4 = [t for t in load_tflite(tmp_path / "mixed.tflite").tensors[0] if t.dtype == "INT4"]
    assert len(int4) == sum(row["int4"] for row in report.layers)
    # every figure again, independently: the float file on LiteRT, each op alone int4, the written file
    to_tflite(model, tmp_path / "float.tflite", None)
    reference = _litert_outputs(tmp_path / "float.tflite", data[:48])
    int8_noise = output_noise(_litert_outputs(tmp_path / "int8.tflite", data[:48]), reference)
    assert report.int8_noise == pytest.approx(int8_noise, rel=1e-6)
    for row in report.layers:
        alone = tmp_path / f"{row['op']}.tflite"
        quantize_tflite(tmp_path / "float.tflite", alone, data, "int8", precision={row["tensor"]: "int4"})
        assert row["saving_bytes"] == report.int8_bytes - alone.stat().st_size
        noise = output_noise(_litert_outputs(alone, data[:48]), reference)
        assert row["sensitivity"] == pytest.approx(max(noise - int8_noise, 0.0), rel=1e-6, abs=1e-12)
    assert report.measured_noise == pytest.approx(
        output_noise(_litert_outputs(tmp_path / "mixed.tflite", data[:48]), reference), rel=1e-6)
    # the choice is the least predicted noise among the sets that fit (brute force over the 4 ops)
    rows = report.layers
    needed = report.int8_bytes - report.target_bytes
    feasible = [s for r in range(5) for s in itertools.combinations(range(4), r)
                if sum(rows[i]["saving_bytes"] for i in s) >= needed]
    best = min(sum(rows[i]["sensitivity"] for i in s) for s in feasible)
    assert report.predicted_noise - report.int8_noise == pytest.approx(best, rel=1e-9, abs=1e-12)
    # TFLite Micro's FULLY_CONNECTED rounds twice, LiteRT's reference kernel once: within 1 LSB
    micro = to_micro(tmp_path / "mixed.tflite", tmp_path / "micro", samples=data[:4])
    assert micro.max_diff_reference <= 1


def test_mixed_precision_with_dense_as_conv_is_per_channel_and_tflm_exact(cnn, tmp_path):
    model, data = cnn
    report = mixed_precision(model, tmp_path / "mixed.tflite", data, fraction_of_int8=0.75, dense_as_conv=True)
    assert report.file_bytes <= report.target_bytes
    assert [row["op"].split("#")[0] for row in report.layers] == ["CONV_2D"] * 4
    parsed = load_tflite(tmp_path / "mixed.tflite")
    int4 = [t for t in parsed.tensors[0] if t.dtype == "INT4"]
    assert int4 and all(len(t.quantization.scales) == t.shape[0] > 1 for t in int4)   # per output channel
    micro = to_micro(tmp_path / "mixed.tflite", tmp_path / "micro", samples=data[:8])
    assert micro.identical and micro.max_diff_reference == 0


def test_mixed_precision_errors_say_what_and_how(cnn, tmp_path):
    model, data = cnn
    with pytest.raises(PrecisionError, match="exactly one of file_bytes and fraction_of_int8"):
        mixed_precision(model, tmp_path / "m.tflite", data)
    with pytest.raises(PrecisionError, match="not in"):
        mixed_precision(model, tmp_path / "m.tflite", data, fraction_of_int8=1.5)
    with pytest.raises(PrecisionError, match="raise the budget"):
        mixed_precision(model, tmp_path / "m.tflite", data, fraction_of_int8=0.05)
    assert not (tmp_path / "m.tflite").exists()

"""to_tflite: full-int8 as a contract, the other modes, calibration sources and errors."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.batchnorm import recalibrate_batchnorm
from tfcompress.errors import (
    BackendError,
    CalibrationDataError,
    ConversionError,
    FloatFallbackError,
    TfcompressError,
)
from tfcompress.export import agreement, load_tflite, to_tflite
from tfcompress.export.runtime import ModelRunner

INTEGER_TENSOR_TYPES = {"INT8", "INT32"}


def _assert_fully_int8(path):
    model = load_tflite(path)
    assert model.float_ops() == []
    assert model.int8_coverage() == 1.0
    for tensor in model.tensors[0]:
        assert tensor.dtype in INTEGER_TENSOR_TYPES, (tensor.name, tensor.dtype)
    for op in model.ops:
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            weights = model.tensor(op.inputs[1])
            assert weights.dtype == "INT8"
            out_channels = weights.shape[3] if op.name == "DEPTHWISE_CONV_2D" else weights.shape[0]
            assert len(weights.quantization.scales) == out_channels, f"{op.name}#{op.index} is not per-channel"
    return model


def _assert_agreement(keras_model, path, x, minimum=0.98):
    predicted = keras_model.predict(x, verbose=0).argmax(-1)
    # An agreement test on a model that always predicts one class proves nothing.
    assert len(np.unique(predicted)) >= 5
    result = agreement(keras_model, path, x)
    assert result.top1_agreement >= minimum, result
    return result


def test_lenet5_caffe_full_int8(trained_lenet, lenet_int8_path, synthetic_data):
    _, _, x_test, _ = synthetic_data
    parsed = _assert_fully_int8(lenet_int8_path)
    assert parsed.op_counts()["CONV_2D"] == 2 and parsed.op_counts()["FULLY_CONNECTED"] == 2
    assert tuple(parsed.inputs[0].shape) == (1, 28, 28, 1)  # static batch 1 for TFLM / Edge TPU
    _assert_agreement(trained_lenet, lenet_int8_path, x_test)


def test_residual_functional_cnn_full_int8(tmp_path):
    from tests.conftest import synthetic_images, train_briefly
    from tfcompress.models import residual_cnn

    keras.utils.set_random_seed(0)
    x, y = synthetic_images(800, shape=(32, 32, 3), seed=3, kind="texture")
    x_test, _ = synthetic_images(200, shape=(32, 32, 3), seed=4, kind="texture")
    model = train_briefly(residual_cnn(), x, y, epochs=3)
    recalibrate_batchnorm(model, x[:256])  # BN's moving statistics lag after 75 steps
    classes = {type(layer).__name__ for layer in model.layers}
    assert {"Add", "Concatenate", "DepthwiseConv2D", "BatchNormalization", "GlobalAveragePooling2D"} <= classes
    report = to_tflite(model, tmp_path / "residual.tflite", "int8", representative_data=x[:200])
    assert report.int8_coverage == 1.0 and report.float_ops == []
    parsed = _assert_fully_int8(tmp_path / "residual.tflite")
    assert {"ADD", "CONCATENATION", "DEPTHWISE_CONV_2D", "MEAN"} <= set(parsed.op_counts())
    _assert_agreement(model, tmp_path / "residual.tflite", x_test)


@pytest.mark.slow
def test_mobilenet_v2_full_int8(tmp_path):
    from tests.conftest import synthetic_images, train_briefly
    from tfcompress.models import mobilenet_v2_tiny

    keras.utils.set_random_seed(0)
    # 48x48, not the 96x96 default: the same layers and ops at a quarter of the training cost
    model = mobilenet_v2_tiny(input_shape=(48, 48, 3))
    x, y = synthetic_images(640, shape=(48, 48, 3), seed=5)
    x_test, y_test = synthetic_images(200, shape=(48, 48, 3), seed=6)
    train_briefly(model, x, y, epochs=6, lr=2e-3)
    recalibrate_batchnorm(model, x[:256])
    # Agreement is only meaningful for a model that learned the task (confident predictions).
    assert np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test) >= 0.9
    report = to_tflite(model, tmp_path / "mnv2.tflite", "int8", representative_data=x[:200])
    assert report.int8_coverage == 1.0
    _assert_fully_int8(tmp_path / "mnv2.tflite")
    _assert_agreement(model, tmp_path / "mnv2.tflite", x_test)


def test_modes_sizes_and_report(trained_lenet, lenet_int8_path, lenet_float_path, tmp_path):
    float_size = os.path.getsize(lenet_float_path)
    int8_size = os.path.getsize(lenet_int8_path)
    assert int8_size <= 0.3 * float_size
    f16 = to_tflite(trained_lenet, tmp_path / "f16.tflite", "float16")
    dyn = to_tflite(trained_lenet, tmp_path / "dyn.tflite", "dynamic")
    assert 0.4 * float_size < f16.size_bytes < 0.6 * float_size
    assert dyn.size_bytes <= 0.3 * float_size
    # float16 keeps float compute; dynamic range keeps float activations.
    assert f16.int8_coverage == 0.0 and dyn.int8_coverage < 1.0
    assert f16.io_dtype == "float32" and f16.inputs[0].dtype == "float32"
    parsed = load_tflite(tmp_path / "dyn.tflite")
    # The converter quantizes weight tensors of at least 1024 elements in dynamic-range mode.
    large = [t for t in parsed.tensors[0] if t.constant and np.prod(t.shape) >= 1024]
    assert large and all(t.dtype == "INT8" for t in large)


@pytest.mark.parametrize("io_dtype", ["uint8", "float32"])
def test_io_dtypes(trained_lenet, synthetic_data, tmp_path, io_dtype):
    x_train, _, x_test, _ = synthetic_data
    path = tmp_path / f"io_{io_dtype}.tflite"
    report = to_tflite(trained_lenet, path, "int8", representative_data=x_train[:100], io_dtype=io_dtype)
    assert report.inputs[0].dtype == io_dtype and report.outputs[0].dtype == io_dtype
    # The interior stays integer: only boundary QUANTIZE/DEQUANTIZE touch float.
    assert report.int8_coverage == 1.0
    runner = ModelRunner(path)
    assert runner.input_details[0]["dtype"] == np.dtype(io_dtype)
    _assert_agreement(trained_lenet, path, x_test, minimum=0.97)


def test_float_op_is_named_and_no_file_written(tmp_path):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(8)(inputs)
    # FLOOR has a float TFLite kernel but no int8 one.
    outputs = keras.layers.Lambda(lambda t: tf.math.floor(t), name="floor_layer")(hidden)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    target = tmp_path / "floor.tflite"
    with pytest.raises(FloatFallbackError) as info:
        to_tflite(model, target, "int8", representative_data=x)
    assert any(op.startswith("FLOOR#") for op in info.value.float_ops), info.value.float_ops
    assert "allow_float_fallback=True" in str(info.value)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    report = to_tflite(model, target, "int8", representative_data=x, allow_float_fallback=True)
    assert report.float_ops and report.int8_coverage < 1.0 and target.exists()


def test_op_without_tflite_builtin_is_named(tmp_path):
    inputs = keras.Input((8,))
    outputs = keras.layers.Lambda(lambda t: tf.math.erf(t), name="erf_layer")(inputs)
    model = keras.Model(inputs, outputs)
    with pytest.raises(ConversionError, match="no TFLite builtin: tf.Erf"):
        to_tflite(model, tmp_path / "erf.tflite", None)
    assert list(tmp_path.iterdir()) == []


def test_calibration_sources_give_the_same_ranges(trained_lenet, synthetic_data, tmp_path):
    x = synthetic_data[0][:64]
    y = synthetic_data[1][:64]
    sources = {
        "array": x,
        "dataset_batched_xy": tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
        "dataset_unbatched": tf.data.Dataset.from_tensor_slices(x),
        "generator_factory": lambda: ([x[i : i + 1]] for i in range(len(x))),
        "generator": (x[i] for i in range(len(x))),
    }
    scales = {}
    for name, source in sources.items():
        report = to_tflite(trained_lenet, tmp_path / f"{name}.tflite", "int8", representative_data=source)
        assert report.calibration_samples == 64, name
        model = load_tflite(tmp_path / f"{name}.tflite")
        scales[name] = [t.quantization.scales[0] for t in model.tensors[0] if t.quantization and not t.constant]
    reference = scales.pop("array")
    for name, values in scales.items():
        np.testing.assert_allclose(values, reference, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((0, 28, 28, 1), np.float32), "empty"),
        (np.zeros((4, 32, 32, 1), np.float32), "expects (28, 28, 1)"),
        (np.zeros((4, 28, 28), np.float32), "expects (28, 28, 1)"),
        (np.zeros((28, 28, 1), np.float32), "missing the sample dimension"),
        (np.full((4, 28, 28, 1), np.nan, np.float32), "NaN"),
        (np.array([["a"] * 4]), "dtype"),
        (None, "needs representative data"),
        (iter([]), "yielded nothing"),
        (tf.data.Dataset.from_tensor_slices(np.zeros((8, 27, 28, 1), np.float32)), "expects (28, 28, 1)"),
    ],
)
def test_bad_calibration_data_is_rejected_before_conversion(trained_lenet, tmp_path, data, message):
    target = tmp_path / "bad.tflite"
    with pytest.raises(CalibrationDataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        to_tflite(trained_lenet, target, "int8", representative_data=data)
    assert not target.exists()


def test_argument_errors(trained_lenet, tmp_path):
    with pytest.raises(TfcompressError, match="unknown quantization"):
        to_tflite(trained_lenet, tmp_path / "m.tflite", "int3")  # int4 is a mode since issue 22
    with pytest.raises(TfcompressError, match="does not go with quantization='float16'"):
        to_tflite(trained_lenet, tmp_path / "m.tflite", "float16", io_dtype="int8")
    with pytest.raises(TfcompressError, match="output directory does not exist"):
        to_tflite(trained_lenet, tmp_path / "missing" / "m.tflite", None)
    with pytest.raises(TfcompressError, match="not a Keras 3 .keras model"):
        (tmp_path / "model.h5").write_bytes(b"\x89HDF....")
        to_tflite(str(tmp_path / "model.h5"), tmp_path / "m.tflite", None)


def test_dynamic_batch_export(trained_lenet, synthetic_data, tmp_path):
    report = to_tflite(trained_lenet, tmp_path / "dyn_batch.tflite", None, batch_size=None)
    parsed = load_tflite(tmp_path / "dyn_batch.tflite")
    assert parsed.inputs[0].shape_signature[0] == -1
    assert report.size_bytes == parsed.size_bytes


def test_keras_path_input(trained_lenet, synthetic_data, tmp_path):
    trained_lenet.save(tmp_path / "lenet.keras")
    report = to_tflite(str(tmp_path / "lenet.keras"), tmp_path / "from_file.tflite", None)
    assert report.num_ops >= 6


def test_export_needs_the_tensorflow_backend(monkeypatch, trained_lenet, tmp_path):
    # Another Keras backend (jax, torch) is not installed here; Keras reports its backend
    # through keras.backend.backend(), which is what the check reads.
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(BackendError, match="KERAS_BACKEND=tensorflow"):
        to_tflite(trained_lenet, tmp_path / "x.tflite", None)
    assert not (tmp_path / "x.tflite").exists()


def test_load_keras_model_of_a_missing_file_is_an_invalid_model_file_error(tmp_path):
    from tfcompress.errors import InvalidModelFileError
    from tfcompress.export import load_keras_model

    with pytest.raises(InvalidModelFileError, match="file not found"):
        load_keras_model(tmp_path / "missing.keras")


def test_the_converters_own_freezing_is_the_fallback_and_writes_the_same_model(tmp_path, monkeypatch):
    # to_tflite freezes the variables itself; when that fails (a graph past protobuf's 2 GiB)
    # the converter freezes them as before: same ops, tensors and outputs
    from tensorflow.python.framework import convert_to_constants

    from tfcompress.export import ModelRunner

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(4)])
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 1)).astype("float32")
    to_tflite(model, tmp_path / "frozen.tflite", "int8", representative_data=x)

    def refuse(*args, **kwargs):
        raise ValueError("graph too large")

    monkeypatch.setattr(convert_to_constants, "convert_variables_to_constants_v2", refuse)
    to_tflite(model, tmp_path / "fallback.tflite", "int8", representative_data=x)
    a, b = load_tflite(tmp_path / "frozen.tflite"), load_tflite(tmp_path / "fallback.tflite")
    assert a.op_counts() == b.op_counts()
    assert [(t.dtype, t.shape, t.quantization) for t in a.tensors[0]] == [(t.dtype, t.shape, t.quantization)
                                                                          for t in b.tensors[0]]
    assert b.outputs[0].name.startswith("StatefulPartitionedCall")      # the converter's own path ran
    np.testing.assert_array_equal(ModelRunner(tmp_path / "frozen.tflite", delegate="none").predict(x),
                                  ModelRunner(tmp_path / "fallback.tflite", delegate="none").predict(x))

"""QAT: int8 TFLite equals the QAT Keras model within 1 LSB on LiteRT and TFLM; the fake-quant math."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import synthetic_images

from tfcompress.errors import TfcompressError
from tfcompress.export.convert import to_tflite
from tfcompress.export.micro import make_tflm_interpreter
from tfcompress.export.runtime import ModelRunner, evaluate
from tfcompress.export.tflite_file import load_tflite
from tfcompress.qat import ActivationQuantizer, QuantizedLayer, fake_quant_per_channel, quantize


def lenet_bn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, name="conv1")(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(12, 3, activation="relu", name="conv2")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(24, activation="relu", name="fc1")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(h))


def residual_concat(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 1))
    a = keras.layers.Conv2D(8, 3, padding="same", name="a")(inp)
    a = keras.layers.BatchNormalization(name="bn_a")(a)
    a = keras.layers.ReLU(max_value=6.0, name="relu6_a")(a)
    b = keras.layers.Conv2D(8, 1, activation="relu", name="b")(inp)
    s = keras.layers.Add(name="add")([a, b])
    d = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(s)
    c = keras.layers.Concatenate(name="cat")([s, d])
    c = keras.layers.Conv2D(12, 1, activation="relu", name="pw")(c)
    g = keras.layers.GlobalAveragePooling2D()(c)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(g))


def train(model, x, y, epochs, lr=3e-3):
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="module")
def data():
    return synthetic_images(640, shape=(16, 16, 1), kind="position", seed=3)


def lsb_agreement(qat, path, x):
    """Fraction of output elements within 1 LSB on LiteRT and on TFLM, and the max LSB."""
    parsed = load_tflite(path)
    scale = parsed.outputs[0].quantization.scales[0]
    keras_out = qat.predict(x, verbose=0)
    litert = ModelRunner(path).predict(x)
    lite_lsb = np.abs(litert - keras_out) / scale
    interpreter = make_tflm_interpreter(parsed.data, arena_size=200_000)
    runner = ModelRunner(path)
    tflm = []
    for i in range(len(x)):
        interpreter.set_input(runner.quantize_input(x[i : i + 1]), 0)
        interpreter.invoke()
        tflm.append(runner.dequantize_output(np.array(interpreter.get_output(0))))
    micro_lsb = np.abs(np.concatenate(tflm) - keras_out) / scale
    return (lite_lsb <= 1.001).mean(), (micro_lsb <= 1.001).mean(), float(max(lite_lsb.max(), micro_lsb.max()))


@pytest.mark.parametrize("build, kind", [(lenet_bn, "position"), (residual_concat, "texture")])
def test_int8_export_equals_qat_model_within_one_lsb(build, kind, tmp_path):
    # position survives Flatten, texture survives global average pooling
    x, y = synthetic_images(640, shape=(16, 16, 1), kind=kind, seed=3)
    float_model = train(build(), x, y, epochs=4)
    qat = train(quantize(float_model), x, y, epochs=2, lr=1e-3)
    path = tmp_path / "qat.tflite"
    report = to_tflite(qat, path, "int8")  # no representative data: the learned ranges
    assert report.int8_coverage == 1.0 and report.calibration_samples == 0
    assert any("quantization-aware" in n for n in report.notes)
    lite, micro, worst = lsb_agreement(qat, path, x[:120])
    assert lite >= 0.99 and micro >= 0.99, (lite, micro, worst)
    assert worst <= 2.0
    accuracy = evaluate(path, x, y).accuracy
    assert accuracy >= 0.5, accuracy  # learned (chance is 0.1), so the comparison is not on noise


def test_folding_matches_keras_batchnorm_in_inference(data):
    x, y = data
    model = train(lenet_bn(), x, y, epochs=1)
    qat = quantize(model)
    layer = qat.get_layer("quant_conv1")
    assert layer.batch_norm is not None and layer.activation == "relu"
    kernel, bias = (keras.ops.convert_to_numpy(t) for t in layer.folded_kernel_and_bias())
    bn = model.get_layer("bn1")
    gamma, beta, mean, var = bn.get_weights()
    w, b = model.get_layer("conv1").get_weights()
    factor = gamma / np.sqrt(var + bn.epsilon)
    np.testing.assert_allclose(kernel, w * factor, rtol=1e-6)
    np.testing.assert_allclose(bias, beta + (b - mean) * factor, rtol=1e-5, atol=1e-6)


def test_fake_quant_math_against_numpy():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 2, 5)).astype("float32")
    ours = fake_quant_per_channel(tf.constant(kernel)).numpy()
    scale = np.abs(kernel).reshape(-1, 5).max(axis=0) / 127.0
    reference = np.clip(np.round(kernel / scale), -127, 127) * scale
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    assert len(np.unique(np.round(ours[..., 0] / scale[0]))) <= 255
    # activations: asymmetric, TF's nudged zero point, 256 levels
    quantizer = ActivationQuantizer(ema_decay=0.5)
    values = rng.uniform(-1.0, 3.0, size=(64, 4)).astype("float32")
    quantizer(values, training=True)
    low, high = float(quantizer.range_min.numpy()), float(quantizer.range_max.numpy())
    assert low == pytest.approx(values.min()) and high == pytest.approx(values.max())
    quantizer(values * 0.5, training=True)  # EMA with decay 0.5
    assert float(quantizer.range_max.numpy()) == pytest.approx(0.5 * high + 0.5 * 0.5 * values.max(), rel=1e-5)
    scale_a, zero = quantizer.scale_and_zero_point()
    out = quantizer(values, training=False).numpy()
    levels = np.round(out / scale_a) + zero
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert levels.min() >= -128 and levels.max() <= 127


def test_start_step_skip_layers_and_serialization(data, tmp_path):
    x, y = data
    model = train(lenet_bn(), x, y, epochs=1)
    qat = quantize(model, start_step=5, skip_layers=["fc1"])
    assert not isinstance(qat.get_layer("fc1"), QuantizedLayer)
    quantizer = qat.get_layer("quantize_" + qat.inputs[0].name) if False else qat.layers[1]
    assert isinstance(quantizer, ActivationQuantizer)
    off = quantizer(x[:8], training=True).numpy()
    np.testing.assert_array_equal(off, x[:8])  # before start_step: identity (ranges tracked)
    train(qat, x, y, epochs=1)
    on = quantizer(x[:8], training=False).numpy()
    assert not np.array_equal(on, x[:8])
    qat.save(tmp_path / "qat.keras")
    again = keras.saving.load_model(tmp_path / "qat.keras")
    np.testing.assert_allclose(again.predict(x[:32], verbose=0), qat.predict(x[:32], verbose=0), atol=1e-6)
    assert again.get_layer("quant_conv1").batch_norm is not None
    with pytest.raises(TfcompressError, match="float"):
        to_tflite(qat, tmp_path / "skip.tflite", "int8")  # fc1 stayed float
    with pytest.raises(TfcompressError, match="unknown layers"):
        quantize(model, skip_layers=["nope"])


def test_pruning_preserving_qat_keeps_every_zero(data, tmp_path):
    from tfcompress.pruning import prune, strip, update_masks
    from tfcompress.schedules import ConstantSparsity

    x, y = data
    model = train(lenet_bn(), x, y, epochs=1)
    pruned = prune(model, ConstantSparsity(0.8, 0), layers={"conv2": {}, "fc1": {}, "logits": {}})
    update_masks(pruned, 0)
    plain = strip(pruned)
    zeros = {n: int((plain.get_layer(n).kernel.numpy() == 0).sum()) for n in ("conv2", "fc1", "logits")}
    qat = train(quantize(plain, preserve_sparsity=True), x, y, epochs=1)
    for name, count in zeros.items():
        kernel, _ = qat.get_layer(f"quant_{name}").folded_kernel_and_bias()
        assert int((keras.ops.convert_to_numpy(kernel) == 0).sum()) == count
    path = tmp_path / "pqat.tflite"
    to_tflite(qat, path, "int8")
    parsed = load_tflite(path)
    int8_zeros = sum(int((parsed.constant_values(t) == 0).sum()) for t in parsed.tensors[0]
                     if t.constant and t.dtype == "INT8" and len(t.shape) >= 2)
    conv1_zeros = int((qat.get_layer("quant_conv1").layer.kernel.numpy() == 0).sum())
    assert int8_zeros >= sum(zeros.values())
    assert int8_zeros - sum(zeros.values()) - conv1_zeros <= 0.01 * sum(zeros.values())

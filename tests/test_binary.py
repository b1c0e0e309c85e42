"""Binary / ternary layers: math, training, exact int8 export, materialize, save/load, packing."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import synthetic_images
from layer_harness import assert_keras_roundtrip

from tfcompress import quantizers
from tfcompress.errors import TfcompressError
from tfcompress.export.calibration import representative_samples
from tfcompress.export.convert import _convert, to_tflite
from tfcompress.export.runtime import agreement
from tfcompress.export.tflite_file import load_tflite
from tfcompress.layers.binary import BinaryConv2D, BinaryDense, QuantizeActivation, materialize
from tfcompress.layers.ternary import TernaryConv2D, TernaryDense
from tfcompress.packing import pack_kernel, packed_kernel_bytes, unpack_kernel, weight_bits_report

LAYERS = {"binary": (BinaryConv2D, BinaryDense), "ternary": (TernaryConv2D, TernaryDense)}
LEVELS = {"binary": {-127, 127}, "ternary": {-127, 0, 127}}


def np_sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def np_twn(w, t=0.7):
    flat = np.abs(w.reshape(-1, w.shape[-1]))
    keep = flat > t * flat.mean(axis=0)
    alpha = (flat * keep).sum(axis=0) / keep.sum(axis=0)
    return (np.sign(w.reshape(flat.shape)) * keep * alpha).reshape(w.shape)


def build(kind, seed=0, conv_kwargs=None, dense_kwargs=None):
    keras.utils.set_random_seed(seed)
    conv, dense = LAYERS[kind]
    return keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            conv(8, 3, activation="relu", name="conv", **(conv_kwargs or {})),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            dense(10, name="dense", **(dense_kwargs or {})),
        ]
    )


@pytest.fixture(scope="module")
def data():
    x, y = synthetic_images(600, shape=(16, 16, 1), seed=2)
    return x[:480], y[:480], x[480:], y[480:]


@pytest.fixture(scope="module", params=["binary", "ternary"])
def trained(request, data):
    x, y, _, _ = data
    model = build(request.param)
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    before = model.get_layer("dense").kernel.numpy().copy()
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return request.param, model, before


def int8_kernels(parsed):
    return [t for t in parsed.tensors[0] if t.constant and t.dtype == "INT8" and len(t.shape) >= 2]


def check_exact_levels(parsed, model, kind):
    """Per output channel, the int8 weights take only the levels, and scale * 127 = alpha_c."""
    kernels = int8_kernels(parsed)
    assert len(kernels) == 2
    alphas = {
        layer.filters if hasattr(layer, "filters") else layer.units: layer.kernel_scale()
        for layer in (model.get_layer("conv"), model.get_layer("dense"))
    }
    for t in kernels:
        values = parsed.constant_values(t)  # TFLite: output channel first
        q = t.quantization
        assert q.per_channel and q.quantized_dimension == 0 and set(q.zero_points) == {0}
        alpha = alphas[values.shape[0]]
        np.testing.assert_allclose(np.asarray(q.scales) * 127, alpha, rtol=1e-6)
        for c in range(values.shape[0]):
            channel = set(np.unique(values[c]).tolist())
            assert channel <= LEVELS[kind] and channel & {-127, 127}


def test_layer_outputs_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 12)).astype("float32")
    for layer, quantize in (
        (
            BinaryDense(4, bias_initializer="random_normal"),
            lambda w: np_sign(w) * np.abs(w).mean(axis=0),
        ),
        (BinaryDense(4, kernel_quantizer="ste_sign"), np_sign),
        (TernaryDense(4, threshold_factor=0.5), lambda w: np_twn(w, 0.5)),
    ):
        out = layer(x).numpy()
        w, b = layer.kernel.numpy(), layer.bias.numpy()
        np.testing.assert_allclose(out, x @ quantize(w) + b, rtol=1e-5, atol=1e-6)
        # the latent kernel stays float (many distinct values)
        assert len(np.unique(w)) == w.size
    conv = TernaryConv2D(5, 3, padding="same", strides=2, input_quantizer="ste_sign")
    images = rng.normal(size=(2, 9, 9, 3)).astype("float32")
    out = conv(images).numpy()
    expected = (
        tf.nn.conv2d(
            np_sign(images).astype("float32"),
            np_twn(conv.kernel.numpy()).astype("float32"),
            2,
            "SAME",
        )
        + conv.bias.numpy()
    )
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_binarized_activations_and_ste_sign_kernel():
    model = build(
        "binary", conv_kwargs={"kernel_quantizer": "ste_sign", "input_quantizer": "ste_sign"}
    )
    layer = model.get_layer("conv")
    assert isinstance(layer.kernel_quantizer, quantizers.SteSign)
    assert isinstance(layer.input_quantizer, quantizers.SteSign)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype("float32")
    expected = tf.nn.relu(
        tf.nn.conv2d(
            np_sign(x).astype("float32"),
            np_sign(layer.kernel.numpy()).astype("float32"),
            1,
            "VALID",
        )
        + layer.bias.numpy()
    )
    np.testing.assert_allclose(layer(x).numpy(), expected.numpy(), atol=1e-5)


def test_kernel_gradient_reaches_latent_weights():
    layer = BinaryDense(3, use_bias=False)
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 6)).astype("float32"))
    layer.build((None, 6))
    w = layer.kernel.numpy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    grad = tape.gradient(loss, layer.kernel).numpy()
    # d sum(x @ Wq) / dWq = x^T 1; XNOR backward: * (1/n + alpha 1{|W| <= 1}), n = 6
    upstream = x.numpy().T @ np.ones((4, 3), "float32")
    alpha = np.abs(w).mean(axis=0)
    np.testing.assert_allclose(
        grad, upstream * (1 / 6 + alpha * (np.abs(w) <= 1)), rtol=1e-5, atol=1e-6
    )


def test_trains_beats_chance(trained, data):
    kind, model, before = trained
    _, _, x_test, y_test = data
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy > 0.5, (kind, accuracy)  # chance is 0.1
    after = model.get_layer("dense").kernel.numpy()
    assert not np.allclose(after, before)


def test_export_int8_exact_levels_and_agreement(trained, data, tmp_path):
    kind, model, _ = trained
    x, _, x_test, _ = data
    path = tmp_path / f"{kind}.tflite"
    report = to_tflite(model, path, "int8", representative_data=x[:100])
    assert report.int8_coverage == 1.0
    parsed = load_tflite(path)
    check_exact_levels(parsed, model, kind)
    match = agreement(model, path, x_test)
    # the weights are exact; what remains is int8 activation rounding (under 1 LSB on average)
    assert match.top1_agreement >= 0.95 and match.mean_abs_error <= match.output_scale, match


def test_direct_conversion_constant_folds_the_quantizer(trained, data):
    # the converter itself (no materialize) folds the quantizer into one constant per layer
    kind, model, _ = trained
    samples = representative_samples(data[0][:50], model, 50)
    parsed = load_tflite(_convert(model, "int8", samples, "int8", False, 1))
    if kind == "ternary" and tuple(int(v) for v in tf.__version__.split(".")[:2]) < (2, 21):
        # TF 2.20's converter leaves the ternary threshold (0.7 mean |w|, Li et al. 2016) of the
        # frozen kernel unfolded, in float; to_tflite materializes the levels first, so its file is
        # all int8 there too (test_export_int8_exact_levels_and_agreement)
        assert {"SUM", "DIV"} <= set(parsed.op_counts()) and parsed.int8_coverage() < 1.0
        return
    assert parsed.int8_coverage() == 1.0
    assert set(parsed.op_counts()) == {"CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED"}
    check_exact_levels(parsed, model, kind)


def test_materialize_and_save_reload(trained, data, tmp_path):
    kind, model, _ = trained
    x = data[2][:32]
    plain = materialize(model)
    assert isinstance(plain, keras.Sequential)
    assert [type(layer) for layer in plain.layers] == [
        keras.layers.Conv2D,
        keras.layers.MaxPooling2D,
        keras.layers.Flatten,
        keras.layers.Dense,
    ]
    np.testing.assert_allclose(
        plain.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )
    dense = model.get_layer("dense")
    np.testing.assert_allclose(
        plain.get_layer("dense").kernel.numpy(),
        keras.ops.convert_to_numpy(dense.quantized_kernel()),
        rtol=1e-6,
    )
    again = assert_keras_roundtrip(model, x, tmp_path, atol=1e-6, name="m")
    assert type(again.get_layer("conv")) is type(model.get_layer("conv"))


@pytest.mark.parametrize(
    "layer",
    [
        BinaryDense(4, kernel_quantizer="ste_sign", input_quantizer="ste_sign"),
        BinaryDense(
            4, kernel_quantizer=quantizers.MagnitudeAwareSign(clip_value=None), activation="relu"
        ),
        BinaryConv2D(4, 3, kernel_quantizer=quantizers.XnorWeight(2.0), padding="same"),
        TernaryDense(4, threshold_factor=0.5, input_quantizer=quantizers.SteSign(0.8)),
        TernaryConv2D(4, 3, threshold_factor=0.9, strides=2),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_every_layer_save_reload(layer, tmp_path):
    shape = (6,) if isinstance(layer, keras.layers.Dense) else (7, 7, 2)
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input(shape), layer])
    x = np.random.default_rng(4).normal(size=(5, *shape)).astype("float32")
    again = assert_keras_roundtrip(model, x, tmp_path, atol=1e-6, name="layer").layers[0]
    assert type(again.kernel_quantizer) is type(layer.kernel_quantizer)
    assert again.kernel_quantizer.get_config() == layer.kernel_quantizer.get_config()
    np.testing.assert_allclose(again(x).numpy(), layer(x).numpy(), atol=1e-6)


def test_bnn_materialize_functional_export_and_reload(data, tmp_path):
    x, y, x_test, _ = data
    keras.utils.set_random_seed(5)
    inputs = keras.Input((16, 16, 1))
    h = BinaryConv2D(8, 3, padding="same", name="conv")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Add()(
        [h, BinaryConv2D(8, 3, padding="same", input_quantizer="ste_sign", name="conv2")(h)]
    )
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.MaxPooling2D()(h))
    outputs = TernaryDense(10, input_quantizer="ste_sign", name="dense")(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x[:128], y[:128], epochs=1, verbose=0)
    plain = materialize(model)
    kinds = [type(layer).__name__ for layer in plain.layers]
    assert (
        kinds.count("QuantizeActivation") == 2
        and "BinaryConv2D" not in kinds
        and "TernaryDense" not in kinds
    )
    np.testing.assert_allclose(
        plain.predict(x_test, verbose=0), model.predict(x_test, verbose=0), rtol=1e-4, atol=1e-4
    )
    assert_keras_roundtrip(plain, x_test, tmp_path, atol=1e-6, name="plain")
    path = tmp_path / "bnn.tflite"
    report = to_tflite(plain, path, "int8", representative_data=x[:100])
    assert report.int8_coverage == 1.0 and report.ops.get("SELECT_V2") == 2
    match = agreement(model, path, x_test)
    assert match.top1_agreement >= 0.9, match


def test_quantize_activation_layer():
    layer = QuantizeActivation("ste_sign")
    x = np.array([[-0.5, 0.0, 2.0]], dtype="float32")
    np.testing.assert_array_equal(layer(x).numpy(), [[-1, 1, 1]])
    with pytest.raises(TfcompressError, match="not an activation quantizer"):
        QuantizeActivation("xnor_weight")


def test_bad_arguments_raise():
    with pytest.raises(TfcompressError, match="binary kernel quantizer"):
        BinaryDense(4, kernel_quantizer="ternary_weight")
    with pytest.raises(TfcompressError, match="binary kernel quantizer"):
        BinaryConv2D(4, 3, kernel_quantizer=None)
    with pytest.raises(TfcompressError, match="kernel_quantizer"):
        BinaryDense(4, kernel_quantizer="sign")
    with pytest.raises(TfcompressError, match="input_quantizer"):
        BinaryDense(4, input_quantizer="xnor_weight")
    with pytest.raises(TfcompressError, match="threshold_factor"):
        TernaryConv2D(4, 3, threshold_factor=0.0)
    with pytest.raises(TfcompressError, match="LoRA"):
        BinaryDense(4, lora_rank=2)
    with pytest.raises(TfcompressError, match="built Sequential or Functional"):
        materialize(BinaryDense(4))


def test_bits_report_against_independent_count():
    model = build("ternary", dense_kwargs={"use_bias": False})
    report = weight_bits_report(model)
    assert [row.name for row in report.layers] == ["conv", "dense"]
    conv, dense = report.layers
    # conv: 3*3*1*8 = 72 weights at 2 bits = 18 bytes, 8 float32 scales, 8 float32 biases
    assert (conv.kind, conv.kernel_weights, conv.scales, conv.other_weights) == (
        "ternary",
        72,
        8,
        8,
    )
    assert conv.packed_bytes == 18 + 4 * 8 + 4 * 8
    assert (
        conv.bits_per_weight == pytest.approx(1.585, abs=1e-3) and conv.packed_bits_per_weight == 2
    )
    n = 7 * 7 * 8 * 10
    assert dense.packed_bytes == n * 2 // 8 + 4 * 10
    assert report.float32_bytes == 4 * model.count_params()
    assert report.compression == pytest.approx(4 * model.count_params() / report.packed_bytes)
    text = report.text()
    assert "total" in text and "conv" in text and f"{report.packed_bytes:,d}" in text

    binary = weight_bits_report(build("binary", conv_kwargs={"kernel_quantizer": "ste_sign"}))
    conv, dense = binary.layers
    assert conv.scales == 0 and conv.packed_bytes == 9 + 4 * 8  # 72 bits, no scales for ste_sign
    assert (
        dense.bits_per_weight == 1.0 and dense.packed_bytes == int(np.ceil(n / 8)) + 4 * 10 + 4 * 10
    )

    plain = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization()]
    )
    rows = weight_bits_report(plain).layers
    assert [(r.kind, r.packed_bytes) for r in rows] == [("float", 4 * 15), ("float", 4 * 12)]


@pytest.mark.parametrize("kind", ["binary", "ternary"])
def test_pack_kernel_sizes_and_round_trip(kind):
    model = build(kind)
    report = {row.name: row for row in weight_bits_report(model).layers}
    levels = 2 if kind == "binary" else 3
    for layer in (model.get_layer("conv"), model.get_layer("dense")):
        kernel = layer.tfcompress_effective_weights()[0]
        packed, scales = pack_kernel(kernel, levels)
        row = report[layer.name]
        assert len(packed) == packed_kernel_bytes(kernel.size, row.packed_bits_per_weight)
        assert len(packed) + 4 * scales.size + 4 * row.other_weights == row.packed_bytes
        np.testing.assert_allclose(scales, layer.kernel_scale(), rtol=1e-6)
        np.testing.assert_array_equal(unpack_kernel(packed, scales, kernel.shape, levels), kernel)
    with pytest.raises(TfcompressError, match="alpha_c"):
        pack_kernel(model.get_layer("dense").kernel.numpy(), levels)

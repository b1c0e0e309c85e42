"""Quantizers: forward math and STE gradients against NumPy, registry, serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress import quantizers
from tfcompress.errors import TfcompressError

RNG = np.random.default_rng(0)
# conv kernel (kh, kw, in, out) with some entries beyond |w| = 1 so the clip matters
W4 = (RNG.normal(size=(3, 3, 4, 6)) * 0.8).astype("float32")
W2 = RNG.normal(size=(20, 5)).astype("float32")


def np_sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def per_channel(w):
    return w.reshape(-1, w.shape[-1])


def np_twn(w, t=0.7):
    flat = np.abs(per_channel(w))
    delta = t * flat.mean(axis=0)
    keep = flat > delta
    alpha = (flat * keep).sum(axis=0) / keep.sum(axis=0)
    return (np.sign(per_channel(w)) * keep * alpha).reshape(w.shape), delta, alpha


def test_ste_sign_forward_convention():
    x = np.array([-2.0, -1e-7, -0.0, 0.0, 1e-7, 0.3, 5.0], dtype="float32")
    out = quantizers.SteSign()(tf.constant(x)).numpy()
    # sign(0) = +1 (BinaryConnect eq. 1: +1 if w >= 0), also for -0.0
    np.testing.assert_array_equal(out, [-1, -1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(out, np_sign(x))
    np.testing.assert_array_equal(quantizers.sign(tf.constant(W4)).numpy(), np_sign(W4))


@pytest.mark.parametrize("cls", [quantizers.XnorWeight, quantizers.MagnitudeAwareSign])
@pytest.mark.parametrize("w", [W4, W2], ids=["conv", "dense"])
def test_xnor_forward_and_scale(cls, w):
    alpha = np.abs(per_channel(w)).mean(axis=0)
    out = cls()(tf.constant(w)).numpy()
    np.testing.assert_allclose(out, np_sign(w) * alpha, rtol=1e-6)
    np.testing.assert_allclose(cls().scale(tf.constant(w)).numpy(), alpha, rtol=1e-6)
    # alpha is the least-squares scale of B = sign(W) (XNOR-Net eq. 4): alpha* = <W, B> / n
    b = np_sign(per_channel(w))
    np.testing.assert_allclose(alpha, (per_channel(w) * b).sum(0) / (b * b).sum(0), rtol=1e-5)
    # each channel takes exactly the two values {-alpha_c, alpha_c}
    for c in range(w.shape[-1]):
        np.testing.assert_allclose(
            np.unique(per_channel(out)[:, c]), [-alpha[c], alpha[c]], rtol=1e-6
        )


@pytest.mark.parametrize("t", [0.7, 0.4, 1.2])
@pytest.mark.parametrize("w", [W4, W2], ids=["conv", "dense"])
def test_twn_threshold_and_scale(t, w):
    expected, delta, alpha = np_twn(w, t)
    q = quantizers.TernaryWeight(t)
    out = q(tf.constant(w)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(q.scale(tf.constant(w)).numpy(), alpha, rtol=1e-5)
    flat = per_channel(out)
    for c in range(w.shape[-1]):
        values = np.unique(flat[:, c])
        np.testing.assert_allclose(values, [-alpha[c], 0.0, alpha[c]], rtol=1e-5, atol=1e-7)
        # zeros exactly where |w| <= Delta_c
        np.testing.assert_array_equal(flat[:, c] == 0, np.abs(per_channel(w)[:, c]) <= delta[c])
    # for the fixed support, alpha is the least-squares scale (TWN eq. 5): <W, T> / <T, T>
    tern = np.sign(flat)
    np.testing.assert_allclose(
        alpha, (per_channel(w) * tern).sum(0) / (tern * tern).sum(0), rtol=1e-5
    )


def test_twn_scale_matches_brute_force_optimum_for_fixed_threshold():
    # independent check: minimize ||W - a T||^2 over a grid of a
    w = W2[:, 0]
    _, delta, alpha = np_twn(W2)
    tern = np.sign(w) * (np.abs(w) > delta[0])
    grid = np.linspace(0.01, 3.0, 30001)
    errors = ((w[None, :] - grid[:, None] * tern[None, :]) ** 2).sum(axis=1)
    assert abs(grid[errors.argmin()] - alpha[0]) < 2e-4
    out = quantizers.TernaryWeight()(tf.constant(W2)).numpy()[:, 0]
    np.testing.assert_allclose(out, alpha[0] * tern, rtol=1e-5)


def gradient(quantizer, w, upstream):
    var = tf.Variable(w)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(quantizer(var) * upstream)
    return tape.gradient(loss, var).numpy()


def test_ste_sign_gradient_is_clipped_identity():
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.2, 1.0, 1.0001, 1.5], dtype="float32")
    g = np.arange(1, 9, dtype="float32")
    # BNN eq. 4: g_x = g_q 1{|x| <= 1} (the boundary |x| = 1 passes)
    np.testing.assert_array_equal(gradient(quantizers.SteSign(), x, g), g * (np.abs(x) <= 1))
    np.testing.assert_array_equal(gradient(quantizers.SteSign(0.5), x, g), g * (np.abs(x) <= 0.5))
    np.testing.assert_array_equal(gradient(quantizers.SteSign(None), x, g), g)


def test_weight_quantizer_gradients_match_analytic():
    g = RNG.normal(size=W4.shape).astype("float32")
    inside = (np.abs(W4) <= 1.0).astype("float32")
    assert 0 < inside.mean() < 1  # the clip is exercised
    alpha = np.abs(per_channel(W4)).mean(axis=0)
    n = W4.size // W4.shape[-1]
    # XNOR-Net sec. 3.1: dC/dW = dC/dW~ (1/n + alpha 1{|W| <= 1})
    np.testing.assert_allclose(
        gradient(quantizers.XnorWeight(), W4, g),
        g * (1.0 / n + alpha * inside),
        rtol=1e-5,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        gradient(quantizers.XnorWeight(None), W4, g), g * (1.0 / n + alpha), rtol=1e-5, atol=1e-7
    )
    # Bi-Real Net: scale held constant, dC/dW = dC/dW~ alpha 1{|W| <= 1}
    np.testing.assert_allclose(
        gradient(quantizers.MagnitudeAwareSign(), W4, g), g * alpha * inside, rtol=1e-5, atol=1e-7
    )
    # TWN: straight through
    np.testing.assert_allclose(gradient(quantizers.TernaryWeight(), W4, g), g, rtol=1e-6)
    np.testing.assert_allclose(
        gradient(quantizers.TernaryWeight(clip_value=1.0), W4, g), g * inside, rtol=1e-6
    )


def test_forward_equals_call_value():
    for q in (
        quantizers.SteSign(),
        quantizers.XnorWeight(),
        quantizers.MagnitudeAwareSign(),
        quantizers.TernaryWeight(0.5),
    ):
        np.testing.assert_allclose(
            q.forward(tf.constant(W4)).numpy(), q(tf.constant(W4)).numpy(), rtol=1e-6
        )


@pytest.mark.parametrize(
    "name, cls",
    [
        ("ste_sign", quantizers.SteSign),
        ("xnor_weight", quantizers.XnorWeight),
        ("magnitude_aware_sign", quantizers.MagnitudeAwareSign),
        ("ternary_weight", quantizers.TernaryWeight),
        ("TernaryWeight", quantizers.TernaryWeight),
    ],
)
def test_get_by_name(name, cls):
    assert type(quantizers.get(name)) is cls


@pytest.mark.parametrize(
    "quantizer",
    [
        quantizers.SteSign(0.5),
        quantizers.SteSign(None),
        quantizers.XnorWeight(2.0),
        quantizers.MagnitudeAwareSign(None),
        quantizers.TernaryWeight(0.6, clip_value=1.5),
    ],
    ids=repr,
)
def test_serialization_round_trip(quantizer):
    config = quantizers.serialize(quantizer)
    assert config["registered_name"] == f"tfcompress>{type(quantizer).__name__}"
    for again in (quantizers.get(config), keras.saving.deserialize_keras_object(config)):
        assert type(again) is type(quantizer) and again.get_config() == quantizer.get_config()
        np.testing.assert_array_equal(
            again(tf.constant(W4)).numpy(), quantizer(tf.constant(W4)).numpy()
        )
    assert quantizers.get(quantizer) is quantizer and quantizers.get(None) is None
    assert quantizers.serialize(None) is None


def test_attributes_for_packing():
    assert (
        quantizers.SteSign.levels,
        quantizers.SteSign.packed_bits,
        quantizers.SteSign.scaled,
    ) == (2, 1, False)
    assert (quantizers.XnorWeight.levels, quantizers.XnorWeight.scaled) == (2, True)
    assert quantizers.TernaryWeight.levels == 3 and quantizers.TernaryWeight.packed_bits == 2
    assert quantizers.TernaryWeight.bits == pytest.approx(np.log2(3))
    assert quantizers.SteSign.activation and not quantizers.XnorWeight.activation


def test_bad_input_raises():
    with pytest.raises(TfcompressError, match="unknown quantizer"):
        quantizers.get("nope")
    with pytest.raises(TfcompressError, match="a quantizer must be"):
        quantizers.get(3)
    with pytest.raises(TfcompressError, match="threshold_factor"):
        quantizers.TernaryWeight(5.0)
    with pytest.raises(TfcompressError, match="threshold_factor"):
        quantizers.TernaryWeight("x")
    with pytest.raises(TfcompressError, match="clip_value"):
        quantizers.SteSign(-1.0)
    with pytest.raises(TfcompressError, match="clip_value"):
        quantizers.XnorWeight(float("inf"))
    with pytest.raises(TfcompressError, match="cannot deserialize"):
        quantizers.get({"class_name": "NoSuchQuantizer", "config": {}})


def test_model_bits_per_weight_counts_kernels_at_log2_levels_and_float_layers_at_32():
    from tfcompress.layers import BinaryDense, TernaryConv2D
    from tfcompress.packing import weight_bits_report

    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        TernaryConv2D(3, 3, name="ternary"),  # kernel 3*3*2*3 = 54 at log2(3), bias left out
        keras.layers.Flatten(),
        BinaryDense(4, name="binary"),  # kernel 48*4 = 192 at 1 bit, bias left out
        keras.layers.Dense(2, name="float"),  # 4*2 + 2 = 10 weights at 32 bits
    ])
    expected = (54 * np.log2(3) + 192 * 1 + 10 * 32) / (54 + 192 + 10)
    report = weight_bits_report(model)
    assert report.bits_per_weight == pytest.approx(expected)
    assert report.to_dict()["bits_per_weight"] == pytest.approx(expected)
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert weight_bits_report(plain).bits_per_weight == 32.0

"""QAT computes the int8 kernels of the interpreter the file will run on (issue 19).

One int8 op per file, random int8 inputs (every level equally likely): the QAT model equals
LiteRT's reference kernels and TFLM in its default arithmetic, and LiteRT's XNNPACK delegate
inside ``kernel_arithmetic("xnnpack")``, on every output. The two arithmetics differ near rounding
boundaries, so each check can fail: for the ops where XNNPACK rounds its own way the test also
asserts that the reference arithmetic misses some XNNPACK outputs. The XNNPACK formulas are
checked against a NumPy transcription of XNNPACK's C (``src/microparams-init.c`` and the scalar
microkernels).
"""

from __future__ import annotations

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_qat import tflm_predict

import tfcompress
from tfcompress.errors import TfcompressError
from tfcompress.export import load_tflite, to_tflite
from tfcompress.export.runtime import ModelRunner, agreement
from tfcompress.layers import xnnpack_kernels
from tfcompress.quantization import current_kernel_arithmetic, kernel_arithmetic

layers = keras.layers
TWO = ((-1.0, 3.0), (-2.5, 1.5))


def _one(shape, body, ranges=((-1.0, 3.0),)):
    inputs = [keras.Input(shape) for _ in ranges]
    return keras.Model(inputs, body(*inputs)), list(ranges)


OPS = {
    # op: (model builder, input ranges), and whether XNNPACK rounds it differently from the reference
    "CONV_2D": (lambda: _one((8, 8, 16), lambda x: layers.Conv2D(24, 3, padding="same")(x)), True),
    "DEPTHWISE_CONV_2D": (lambda: _one((8, 8, 16), lambda x: layers.DepthwiseConv2D(3, padding="same")(x)), True),
    "FULLY_CONNECTED": (lambda: _one((64,), lambda x: layers.Dense(48)(x)), False),
    "ADD": (lambda: _one((8, 8, 16), lambda a, b: layers.Add()([a, b]), TWO), False),
    "MUL": (lambda: _one((8, 8, 16), lambda a, b: layers.Multiply()([a, b]), TWO), True),
    "MEAN": (lambda: _one((8, 8, 16), lambda x: layers.GlobalAveragePooling2D(keepdims=True)(x)), True),
    "AVERAGE_POOL_2D": (lambda: _one((8, 8, 16), lambda x: layers.AveragePooling2D(2)(x)), True),
    "swish": (lambda: _one((8, 8, 16), lambda x: layers.Activation("swish")(x), ((-4.0, 5.0),)), False),
    "HARD_SWISH": (lambda: _one((8, 8, 16), lambda x: layers.Activation("hard_swish")(x), ((-4.0, 5.0),)), False),
}


def _dequantize(runner, raw):
    return [(value.astype(np.float32) - d["quantization"][1]) * d["quantization"][0]
            for value, d in zip(raw, runner.input_details, strict=True)]


@pytest.mark.parametrize("op", list(OPS))
def test_each_op_equals_each_interpreter_in_its_arithmetic(op, tmp_path):
    build, xnnpack_rounds_its_own_way = OPS[op]
    keras.utils.set_random_seed(0)
    model, ranges = build()
    qat = tfcompress.quantize(model)
    rng = np.random.default_rng(0)
    for _ in range(4):
        batch = [rng.uniform(lo, hi, (32, *model.inputs[i].shape[1:])).astype("float32")
                 for i, (lo, hi) in enumerate(ranges)]
        qat(batch if len(batch) > 1 else batch[0], training=True)
    path = tmp_path / "op.tflite"
    to_tflite(qat, path, "int8")
    assert len(model.inputs) == 1 or load_tflite(path).op_counts() == {op: 1}
    reference, xnnpack = ModelRunner(path, reference_kernels=True), ModelRunner(path)
    # XNNPACK takes every op here but HARD_SWISH, which then runs on LiteRT's builtin kernel
    assert ("xnnpack" in xnnpack.info.delegate) == (op != "HARD_SWISH"), xnnpack.info.delegate
    # int8 inputs on every level, dequantized; the Keras inputs in the file's input order
    raw = [[rng.integers(-128, 128, tuple(d["shape"])).astype(np.int8) for d in reference.input_details]
           for _ in range(48)]
    order = ([next(i for i, d in enumerate(reference.input_details) if f"quantize_{t.name}_" in d["name"])
              for t in qat.inputs] if len(qat.inputs) > 1 else [0])
    x = [np.concatenate([_dequantize(reference, r)[i] for r in raw]) for i in order]
    x = x if len(x) > 1 else x[0]
    scale, zero = reference.output_details[0]["quantization"]

    def levels(out):
        return np.round(np.asarray(out) / scale + zero).astype(np.int64)

    on = {name: np.concatenate([r.invoke_raw(sample)[0].astype(np.int64) for sample in raw])
          for name, r in (("reference", reference), ("xnnpack", xnnpack))}
    as_reference = levels(qat(x, training=False)).reshape(on["reference"].shape)
    with kernel_arithmetic("xnnpack"):
        as_xnnpack = levels(qat(x, training=False)).reshape(on["xnnpack"].shape)
    np.testing.assert_array_equal(as_reference, on["reference"])
    np.testing.assert_array_equal(as_xnnpack, on["xnnpack"])
    if len(model.inputs) == 1:  # TFLM runs the reference kernels
        micro = tflm_predict(path, x)
        np.testing.assert_array_equal(levels(micro).reshape(as_reference.shape), as_reference)
    if xnnpack_rounds_its_own_way:  # the two arithmetics really differ on this op
        assert (on["xnnpack"] != on["reference"]).any()
        assert (as_reference != on["xnnpack"]).any()


# ------------------------------------------------ the formulas against a NumPy port of XNNPACK's C


def _lrintf(v):
    return np.rint(np.float32(v)).astype(np.int64)  # round half to even, as lrintf in the default mode


def test_requantize_mul_mean_match_the_fp32_microkernels():
    rng = np.random.default_rng(1)
    acc = rng.integers(-(2**20), 2**20, 4000)
    s_in, s_out = np.float32(0.0157), np.float32(0.0461)
    s_w = rng.uniform(1e-3, 2e-2, 4000).astype(np.float32)
    scale = (s_in * s_w) / s_out  # float32 throughout, as the C evaluates it
    expected = _lrintf(acc.astype(np.float32) * scale)
    np.testing.assert_array_equal(xnnpack_kernels.requantize(acc, s_in, s_w, s_out).numpy(), expected)
    # ties go to even: 2.5 -> 2, 3.5 -> 4 (the reference kernels round half away from zero)
    assert xnnpack_kernels.requantize([5, 7, -5], 1.0, [0.5] * 3, 1.0).numpy().tolist() == [2, 4, -2]

    a, b = rng.integers(-128, 128, 4000), rng.integers(-128, 128, 4000)
    sa, sb, so = np.float32(0.0157), np.float32(0.0203), np.float32(0.0464)
    product_scale = np.float32(np.float32(sa * sb) / so)
    vacc = ((a - 5) * (b + 9)).astype(np.float32) * product_scale
    expected = np.clip(_lrintf(np.clip(vacc, -128 - 30, 127 - 30)) + 30, -128, 127)
    np.testing.assert_array_equal(xnnpack_kernels.mul(a, 5, sa, b, -9, sb, so, 30).numpy(), expected)

    total = rng.integers(-128 * 49, 128 * 49, 4000)
    mean_scale = np.float32(np.float32(sa / so) * np.float32(1.0 / 49))
    offset = np.float32(np.float32(-3) - np.float32(49 * 7) * mean_scale)  # y_zero_point' of reduce-nd.c
    expected = np.clip(_lrintf(total.astype(np.float32) * mean_scale + offset), -128, 127)
    np.testing.assert_array_equal(xnnpack_kernels.mean(total, 49, 7, sa, so, -3).numpy(), expected)


def _add_params(sa, sb, so, za, zb):
    """xnn_init_qs8_add_minmax_scalar_params, transcribed."""
    a_scale, b_scale = np.float32(np.float32(sa) / np.float32(so)), np.float32(np.float32(sb) / np.float32(so))
    largest = max(abs(a_scale), abs(b_scale))
    exponent = int(np.frombuffer(np.float32(largest).tobytes(), np.uint32)[0] >> 23) - 127
    shift = 20 - exponent
    a_mult = int(np.rint(np.float32(a_scale * np.float32(2.0**shift))))
    b_mult = int(np.rint(np.float32(b_scale * np.float32(2.0**shift))))
    bias = (1 << (shift - 1)) - a_mult * za - b_mult * zb
    return a_mult, b_mult, bias, shift


def test_add_and_quantize_match_the_fixed_point_microkernels():
    rng = np.random.default_rng(2)
    a, b = rng.integers(-128, 128, 5000), rng.integers(-128, 128, 5000)
    for sa, sb, so, za, zb, zo in ((0.0157, 0.0157, 0.0311, -64, 31, -17), (0.002, 0.09, 0.05, 3, -100, 12)):
        a_mult, b_mult, bias, shift = _add_params(sa, sb, so, za, zb)
        expected = np.clip(((bias + a * a_mult + b * b_mult) >> shift) + zo, -128, 127)
        got = xnnpack_kernels.add(a, za, sa, b, zb, sb, so, zo).numpy()
        np.testing.assert_array_equal(got, expected)
    # QUANTIZE int8 -> int8: an 8-bit multiplier, so it is coarser than the reference's 31 bits
    q = rng.integers(-128, 128, 5000)
    s_in, s_out = np.float32(0.0156858), np.float32(0.0139636)
    multiplier = int(np.rint(np.float32(256.0) * np.float32(s_in / s_out)))
    bias = (-73 << 8) - multiplier * (-64) + 0x80
    expected = np.clip((bias + q * multiplier) >> 8, -128, 127)
    np.testing.assert_array_equal(xnnpack_kernels.quantize(q, -64, s_in, s_out, -73).numpy(), expected)


# ------------------------------------------------------------------------- the scoped switch


def test_kernel_arithmetic_is_scoped_and_checked():
    assert current_kernel_arithmetic() == "reference"
    with kernel_arithmetic("xnnpack"):
        assert current_kernel_arithmetic() == "xnnpack"
        with kernel_arithmetic("reference"):
            assert current_kernel_arithmetic() == "reference"
        assert current_kernel_arithmetic() == "xnnpack"
        seen = []
        thread = threading.Thread(target=lambda: seen.append(current_kernel_arithmetic()))
        thread.start()
        thread.join()
        assert seen == ["reference"]  # another thread keeps its own setting
    assert current_kernel_arithmetic() == "reference"
    with pytest.raises(TfcompressError, match="unknown kernels 'arm'"), kernel_arithmetic("arm"):
        pass
    with pytest.raises(RuntimeError), kernel_arithmetic("xnnpack"):
        raise RuntimeError  # restored on an exception too
    assert current_kernel_arithmetic() == "reference"


def test_predict_is_retraced_inside_the_block_for_the_model_given(tmp_path):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 16)), layers.Conv2D(24, 3, padding="same"),
                              layers.GlobalAveragePooling2D(keepdims=True)])
    qat = tfcompress.quantize(model)
    x = np.random.default_rng(3).uniform(-1, 3, (64, 8, 8, 16)).astype("float32")
    qat(x, training=True)
    plain = qat.predict(x, verbose=0)  # traces predict in the reference arithmetic
    with kernel_arithmetic("xnnpack"):
        direct = np.asarray(qat(x, training=False))
    with kernel_arithmetic("xnnpack", qat):
        predicted = qat.predict(x, verbose=0)
    np.testing.assert_array_equal(predicted, direct)
    assert not np.array_equal(predicted, plain)  # MEAN rounds differently on some of the 24 x 64 values
    np.testing.assert_array_equal(qat.predict(x, verbose=0), plain)  # and back after the block
    to_tflite(qat, tmp_path / "m.tflite", "int8")
    np.testing.assert_array_equal(ModelRunner(tmp_path / "m.tflite").predict(x), predicted)
    assert tf.executing_eagerly()
    # agreement runs the QAT model in the arithmetic of the kernels it runs the file on
    for kwargs in ({}, {"reference_kernels": True}):
        assert agreement(qat, tmp_path / "m.tflite", x, **kwargs).max_error_lsb == 0.0, kwargs

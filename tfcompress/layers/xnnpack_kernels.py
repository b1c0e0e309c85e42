"""XNNPACK's int8 arithmetic on x86-64, written in TensorFlow ops, bit for bit.

LiteRT runs int8 files through its XNNPACK delegate by default, and XNNPACK does not round as the
reference kernels do (`tfcompress.layers.int8_kernels`, which TFLite Micro runs): its x86
microkernels requantize in float32 and round once, to nearest even (``fp32`` requantization,
``xnn_init_qs8_conv_minmax_fp32_scalar_params``), its ADD and its int8-to-int8 QUANTIZE use
their own fixed-point multipliers (``xnn_init_qs8_add_minmax_scalar_params``,
``xnn_init_qs8_cvt_scalar_params``; XNNPACK ``src/microparams-init.c``). One output value near a
rounding boundary can so differ by one level between the two, and a deep network carries the
difference on. The QAT layers compute these instead of the reference kernels inside
``tfcompress.quantization.kernel_arithmetic("xnnpack")``.

Every function takes ``tf.int64`` tensors of int8 / int32 values and float64 tensors holding the
float32 scales of the file, and returns ``tf.int64`` levels. XNNPACK's Arm builds requantize with
other microkernels (``rndnu``); these are the x86-64 ones, checked against LiteRT's XNNPACK on
one-op files in ``tests/test_qat_kernels.py``.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["add", "mean", "mul", "quantize", "requantize"]

_I64 = tf.int64
_F32 = tf.float32
_F64 = tf.float64


def _f32(x):
    return tf.cast(x, _F32)


def _i64(x):
    return tf.cast(x, _I64)


def _clamp(x, low, high):
    return tf.clip_by_value(x, _i64(low), _i64(high))


def _round_f32(x):
    """``lrintf`` (and XNNPACK's magic-bias rounding) in the default rounding mode: half to even."""
    return _i64(tf.round(x))


def requantize(acc, s_in, s_w, s_out):
    """``lrintf(float(acc) * scale)``, ``scale = s_in * s_w / s_out`` in float32 (CONV_2D,
    DEPTHWISE_CONV_2D and FULLY_CONNECTED; the output zero point and clamp are the caller's).

    Example:
        >>> requantize([100, 5, -5], 0.5, [0.1, 0.1, 0.1], 1.0).numpy().tolist()   # 5 * 0.05 = 0.25 -> 0
        [5, 0, 0]
    """
    scale = _f32(s_in) * _f32(s_w) / _f32(s_out)  # evaluated in float32, as the C does
    return _round_f32(_f32(_i64(acc)) * scale)


def mul(q1, z1, s1, q2, z2, s2, s_out, z_out, act_min=-128, act_max=127):
    """int8 MUL (``xnn_qs8_vmul_minmax_fp32_ukernel``): ``(q1 - z1)(q2 - z2)`` times
    ``s1 s2 / s_out`` in float32, rounded to nearest even, plus ``z_out``, clamped.

    Example:
        >>> mul([10], 0, 0.5, [3], 0, 0.5, 1.0, 0).numpy().tolist()   # 30 * 0.25 = 7.5 -> 8 (even)
        [8]
    """
    scale = _f32(s1) * _f32(s2) / _f32(s_out)
    product = (_i64(q1) - _i64(z1)) * (_i64(q2) - _i64(z2))
    return _clamp(_round_f32(_f32(product) * scale) + _i64(z_out), act_min, act_max)


def add(q1, z1, s1, q2, z2, s2, s_out, z_out, act_min=-128, act_max=127):
    """int8 ADD (``xnn_qs8_vadd_minmax_ukernel``): both inputs times integer multipliers of
    about 21 bits, ``a = lrintf(s1 / s_out 2^shift)``, summed with a bias that folds the zero
    points and the rounding, shifted right by ``shift = 20 - floor(log2 max(s1, s2) / s_out)``.

    Example:
        >>> add([10], 0, 0.5, [3], 0, 0.5, 1.0, 0).numpy().tolist()   # 5 + 1.5 = 6.5 -> 7 (half up)
        [7]
    """
    a_scale = _f32(s1) / _f32(s_out)
    b_scale = _f32(s2) / _f32(s_out)
    largest = tf.maximum(tf.abs(a_scale), tf.abs(b_scale))
    exponent = _i64(tf.bitwise.right_shift(tf.bitcast(largest, tf.int32), 23)) - 127
    shift = 20 - exponent
    two_to_shift = _f32(tf.pow(tf.constant(2.0, _F64), tf.cast(shift, _F64)))  # exact power of two
    a_mult = _round_f32(a_scale * two_to_shift)
    b_mult = _round_f32(b_scale * two_to_shift)
    bias = tf.bitwise.left_shift(tf.constant(1, _I64), shift - 1) - a_mult * _i64(z1) - b_mult * _i64(z2)
    total = bias + _i64(q1) * a_mult + _i64(q2) * b_mult
    return _clamp(tf.bitwise.right_shift(total, shift) + _i64(z_out), act_min, act_max)


def mean(total, count: int, z_in, s_in, s_out, z_out):
    """int8 MEAN (XNNPACK's qs8 reduce, ``src/operators/reduce-nd.c``): the int32 sum of the levels
    converted in float32 as ``sum scale + (z_out - count z_in scale)``, ``scale = (s_in / s_out)
    (1 / count)``, rounded to nearest even. The zero points are folded into a float offset, so a
    value within float32 precision of a half level can round otherwise than ``(sum - count z_in)
    scale`` would (seen on MobileNetV3Small's squeeze-and-excite pools).

    Example:
        >>> mean([10], 4, 0, 1.0, 1.0, 0).numpy().tolist()   # 10 / 4 = 2.5 -> 2 (even)
        [2]
    """
    scale = (_f32(s_in) / _f32(s_out)) * _f32(1.0 / int(count))
    offset = _f32(z_out) - _f32(_i64(z_in) * int(count)) * scale
    return _clamp(_round_f32(_f32(_i64(total)) * scale + offset), -128, 127)


def quantize(q, z_in, s_in, s_out, z_out):
    """int8 to int8 QUANTIZE (``xnn_qs8_vcvt_ukernel``): an 8-bit fractional multiplier
    ``m = lrintf(256 s_in / s_out)``, then ``((q - z_in) m + 128) >> 8`` plus ``z_out``.

    Example:
        >>> quantize([10, 11], 0, 0.5, 1.0, 0).numpy().tolist()   # 5 -> 5, 5.5 -> 6 (half up)
        [5, 6]
    """
    multiplier = _round_f32(tf.constant(256.0, _F32) * (_f32(s_in) / _f32(s_out)))
    shifted = tf.bitwise.right_shift((_i64(q) - _i64(z_in)) * multiplier + 128, tf.constant(8, _I64))
    return _clamp(shifted + _i64(z_out), -128, 127)

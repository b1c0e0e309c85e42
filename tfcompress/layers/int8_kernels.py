"""TFLite's int8 kernels, written in TensorFlow integer ops, bit for bit.

What the QAT layers (`tfcompress.layers.fake_quant`) compute in their forward pass so that a QAT
model equals its int8 file on TFLite Micro and on LiteRT's reference kernels: the fixed-point
arithmetic of the reference kernels (``tensorflow/lite/kernels/internal/reference/``, which TFLite
Micro runs), with gemmlowp's fixed-point primitives (``gemmlowp/fixedpoint/fixedpoint.h``: Jacob
et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", sec. 2.2), each kernel's multipliers derived from the float32 scales of the file as
its ``Prepare`` derives them.

Every function takes and returns ``tf.int64`` tensors that hold the kernel's int32 (or int16)
values, so products never overflow; scales are float64 tensors holding the float32 values the
file stores. The elementwise kernels of one int8 input (HARD_SWISH, LOGISTIC) are lookup tables
over the 256 input levels, computed from the current scales and gathered.

Kernels: the requantization of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED
(:func:`multiply_by_quantized_multiplier`), ADD, MUL, MEAN, HARD_SWISH, LOGISTIC and SOFTMAX.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = [
    "add",
    "hard_swish_table",
    "logistic_table",
    "logistic_table_float",
    "lookup",
    "mean",
    "mul",
    "multiply_by_quantized_multiplier",
    "quantize_multiplier",
    "requantize",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
    "softmax",
]

_I64 = tf.int64
_F64 = tf.float64
_INT32_MAX = 2**31 - 1
_INT16_MIN, _INT16_MAX = -(2**15), 2**15 - 1


def _i64(x):
    return tf.cast(x, _I64)


def _kernel(fn):
    """A kernel as one graph function: traced once per argument signature (scalars of any value,
    shapes generalized) and left as a call in the graphs that use it, so a QAT model with a hundred
    quantizers traces and optimizes each kernel once, not a hundred times."""
    return tf.function(fn, reduce_retracing=True, autograph=False, experimental_attributes={"_noinline": True})


def _pow2(exponent):
    """2^exponent as float64, exact (built from the exponent bits), for integer tensors in [-1022, 1023]."""
    return tf.bitcast(tf.bitwise.left_shift(_i64(exponent) + 1023, tf.constant(52, _I64)), _F64)


def _shift_left(x, amount):
    return x * tf.bitwise.left_shift(tf.constant(1, _I64), _i64(amount))


def quantize_multiplier(real):
    """TFLite's ``QuantizeMultiplier``: ``real = q 2^-31 2^shift`` with ``q`` in [2^30, 2^31).

    ``frexp`` gives ``real = m 2^shift``, ``m`` in [0.5, 1); ``q = round(m 2^31)`` (ties away from
    zero); ``q = 2^31`` becomes ``2^30`` with ``shift + 1``; a shift below -31 gives 0. ``real``:
    float64 tensor >= 0 (elementwise). Returns (q, shift) as int64 tensors.

    Example:
        >>> q, shift = quantize_multiplier(tf.constant([0.75, 0.1], tf.float64))   # 0.1 = 0.8 * 2^-3
        >>> q.numpy().tolist(), shift.numpy().tolist()
        ([1610612736, 1717986918], [0, -3])
        >>> int(quantize_multiplier(tf.constant(0.1, tf.float32))[0])    # the float32 scale of a .tflite
        1717986944
    """
    real = tf.cast(real, _F64)
    bits = tf.bitcast(real, _I64)
    shift = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, tf.constant(52, _I64)), 0x7FF) - 1022
    q = _i64(tf.floor(real * _pow2(tf.clip_by_value(31 - shift, -1022, 1023)) + 0.5))
    full = tf.equal(q, 2**31)
    q = tf.where(full, q // 2, q)
    shift = tf.where(full, shift + 1, shift)
    tiny = tf.logical_or(shift < -31, tf.equal(real, 0.0))
    return tf.where(tiny, tf.zeros_like(q), q), tf.where(tiny, tf.zeros_like(shift), shift)


def saturating_rounding_doubling_high_mul(a, b, bits: int = 32):
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` on int32 values (int16 with ``bits=16``):
    ``round(a b / 2^(bits - 1))``, the nudge ``2^(bits - 2)`` (``1 - 2^(bits - 2)`` for a negative
    product) added before a division truncating toward zero; ``a = b = -2^(bits - 1)`` saturates to
    ``2^(bits - 1) - 1``.

    Example:
        >>> saturating_rounding_doubling_high_mul([2**30, -2**31], [2**30, -2**31]).numpy().tolist()
        [536870912, 2147483647]
    """
    a, b = _i64(a), _i64(b)
    product = a * b
    nudge = tf.where(product >= 0, tf.constant(2 ** (bits - 2), _I64), tf.constant(1 - 2 ** (bits - 2), _I64))
    high = tf.truncatediv(product + nudge, tf.constant(2 ** (bits - 1), _I64))
    overflow = tf.logical_and(tf.equal(a, b), tf.equal(a, -(2 ** (bits - 1))))
    return tf.where(overflow, tf.constant(2 ** (bits - 1) - 1, _I64), high)


def _srdhm16(a, b):
    return saturating_rounding_doubling_high_mul(a, b, bits=16)


def _sdhm16(a, b):
    """``SaturatingDoublingHighMul`` of the reference HARD_SWISH: ``a b / 2^15`` truncated."""
    a, b = _i64(a), _i64(b)
    high = tf.truncatediv(a * b, tf.constant(2**15, _I64))
    overflow = tf.logical_and(tf.equal(a, b), tf.equal(a, _INT16_MIN))
    return tf.where(overflow, tf.constant(_INT16_MAX, _I64), high)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded half away from zero
    (``exponent`` >= 0, elementwise).

    Example:
        >>> rounding_divide_by_pot([5, -5, 6, 7], 1).numpy().tolist()        # 2.5 -> 3, -2.5 -> -3, 3, 3.5 -> 4
        [3, -3, 3, 4]
    """
    x, exponent = _i64(x), _i64(exponent)
    mask = tf.bitwise.left_shift(tf.constant(1, _I64), exponent) - 1
    remainder = tf.bitwise.bitwise_and(x, mask)
    threshold = tf.bitwise.right_shift(mask, tf.constant(1, _I64)) + _i64(x < 0)
    return tf.bitwise.right_shift(x, exponent) + _i64(remainder > threshold)


def _saturating_shift_left(x, exponent: int, bits: int = 32):
    """gemmlowp's ``SaturatingRoundingMultiplyByPOT<exponent>`` for exponent > 0."""
    threshold = (1 << (bits - 1 - exponent)) - 1
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    shifted = x * (1 << exponent)
    return tf.where(x > threshold, tf.constant(high, _I64), tf.where(x < -threshold, tf.constant(low, _I64), shifted))


def multiply_by_quantized_multiplier(x, q, shift):
    """TFLite's ``MultiplyByQuantizedMultiplier`` (double rounding): ``x 2^max(shift, 0)``,
    `saturating_rounding_doubling_high_mul` by ``q``, then `rounding_divide_by_pot` by
    ``max(-shift, 0)``.

    Example:
        >>> q, shift = quantize_multiplier(0.1)
        >>> multiply_by_quantized_multiplier([100, 1234, -55], q, shift).numpy().tolist()   # x * 0.1, rounded
        [10, 123, -6]
    """
    shift = _i64(shift)
    left, right = tf.maximum(shift, 0), tf.maximum(-shift, 0)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(_shift_left(_i64(x), left), q), right)


@_kernel
def requantize(acc, real_multiplier):
    """``acc M`` as the int8 kernels round it: ``(q, shift) = quantize_multiplier(M)``, then
    `multiply_by_quantized_multiplier` (the output stage of CONV_2D, DEPTHWISE_CONV_2D,
    FULLY_CONNECTED and QUANTIZE)."""
    q, shift = quantize_multiplier(real_multiplier)
    return multiply_by_quantized_multiplier(acc, q, shift)


def _clamp(x, low, high):
    return tf.clip_by_value(x, _i64(low), _i64(high))


def _stoe(x, q, shift):
    """``MultiplyByQuantizedMultiplierSmallerThanOneExp`` (shift <= 0)."""
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, q), -_i64(shift))


@_kernel
def add(q1, z1, s1, q2, z2, s2, s_out, z_out, act_min=-128, act_max=127):
    """int8 ADD (``reference_integer_ops::Add``, ``BroadcastAdd6DSlow``; TFLM's ADD).

    Both inputs are shifted left by 20 bits and rescaled to ``2 max(s1, s2)`` with their
    multipliers ``s_i / (2 max(s1, s2))``, summed, and rescaled to the output with
    ``2 max(s1, s2) / (2^20 s_out)``; the fused activation clamps to ``[act_min, act_max]``.
    ``q*``: int8 levels (broadcastable), ``z*``: zero points, ``s*``: float64 scales.
    """
    s1, s2, s_out = (tf.cast(s, _F64) for s in (s1, s2, s_out))
    twice = 2.0 * tf.maximum(s1, s2)
    m1, e1 = quantize_multiplier(s1 / twice)
    m2, e2 = quantize_multiplier(s2 / twice)
    mo, eo = quantize_multiplier(twice / ((1 << 20) * s_out))
    a = (_i64(q1) - _i64(z1)) * (1 << 20)
    b = (_i64(q2) - _i64(z2)) * (1 << 20)
    total = _stoe(a, m1, e1) + _stoe(b, m2, e2)
    return _clamp(_stoe(total, mo, eo) + _i64(z_out), act_min, act_max)


@_kernel
def mul(q1, z1, s1, q2, z2, s2, s_out, z_out, act_min=-128, act_max=127, float32_multiplier: bool = False):
    """int8 MUL (``reference_integer_ops::MulElementwise`` / ``BroadcastMul6DSlow``):
    ``(q1 - z1)(q2 - z2)`` rescaled by ``s1 s2 / s_out`` plus ``z_out``, clamped.

    TFLM computes the multiplier in double from the float32 scales; LiteRT's MUL ``Prepare``
    multiplies and divides the float32 scales in float32 first (``float32_multiplier``), which
    can move the int32 multiplier's last bits.
    """
    if float32_multiplier:
        f32 = tf.float32
        real = tf.cast(tf.cast(s1, f32) * tf.cast(s2, f32) / tf.cast(s_out, f32), _F64)
    else:
        real = tf.cast(s1, _F64) * tf.cast(s2, _F64) / tf.cast(s_out, _F64)
    product = (_i64(q1) - _i64(z1)) * (_i64(q2) - _i64(z2))
    return _clamp(requantize(product, real) + _i64(z_out), act_min, act_max)


@_kernel
def mean(total, count: int, z_in, s_in, s_out, z_out):
    """int8 MEAN (``reference_ops::QuantizedMeanOrSum``, LiteRT's reference kernel and TFLM's).

    ``total``: the sum of the int8 levels over the reduced axes, ``count`` values each. The
    multiplier ``s_in / s_out`` is rescaled by ``1 / count`` in fixed point
    (``(q << k) / count`` in integers, ``k = floor(log2 count)`` capped at 32 and ``31 + shift``),
    then ``total - z_in count`` is multiplied by it.
    """
    q, shift = quantize_multiplier(tf.cast(s_in, _F64) / tf.cast(s_out, _F64))
    k = tf.minimum(tf.minimum(tf.constant(int(count).bit_length() - 1, _I64), 32), 31 + shift)
    q = tf.math.floordiv(tf.bitwise.left_shift(q, k), tf.constant(int(count), _I64))
    shifted = _i64(total) - _i64(z_in) * int(count)
    return _clamp(multiply_by_quantized_multiplier(shifted, q, shift - k) + _i64(z_out), -128, 127)


def _levels():
    """The 256 int8 levels -128..127."""
    return tf.range(-128, 128, dtype=_I64)


def lookup(table, levels):
    """``table[levels + 128]``: an elementwise int8 kernel applied through its 256-entry table.

    Example:
        >>> table = logistic_table_float(0.1, 0)        # int8 LOGISTIC for input scale 0.1, zero point 0
        >>> lookup(table, [-128, 0, 10, 127]).numpy().tolist()   # sigmoid(1.0) * 256 - 128 = 59.2
        [-128, 0, 59, 127]
    """
    return tf.gather(table, _i64(levels) + 128)


def _downscale_to_int16(q):
    """TFLite's ``DownScaleInt32ToInt16Multiplier``."""
    return tf.where(q >= _INT32_MAX - (1 << 15), tf.constant(_INT16_MAX, _I64),
                    tf.bitwise.right_shift(q + (1 << 15), tf.constant(16, _I64)))


@_kernel
def hard_swish_table(s_in, z_in, s_out, z_out):
    """The 256 outputs of int8 HARD_SWISH (``reference_ops::HardSwish``, TFLM's too) for the
    input levels -128..127: int16 fixed point, the multipliers ``(s_in / 128) / s_out`` and
    ``(s_in / 128) / (3 / 32768)`` computed in float32 and reduced to int16, as ``Prepare`` does."""
    f32 = tf.float32
    hires = tf.constant(1.0 / 128.0, f32) * tf.cast(s_in, f32)
    out_q, out_e = quantize_multiplier(tf.cast(hires / tf.cast(s_out, f32), _F64))
    relu_q, relu_e = quantize_multiplier(tf.cast(hires / tf.constant(3.0 / 32768.0, f32), _F64))
    out_q, relu_q = _downscale_to_int16(out_q), _downscale_to_int16(relu_q)
    value = (_levels() - _i64(z_in)) * 128  # input_value_on_hires_input_scale
    preshift = _srdhm16(value, out_q)

    def saturating_left_shift16(x, amount):
        return tf.clip_by_value(_shift_left(x, tf.maximum(amount, 0)), _INT16_MIN, _INT16_MAX)

    relu = tf.where(relu_e > 0, saturating_left_shift16(value, relu_e - 1), value)
    relu = _srdhm16(relu, relu_q)
    relu = tf.where(relu_e > 0, saturating_left_shift16(relu, tf.ones_like(relu_e)), relu)
    relu = tf.where(relu_e < 0, rounding_divide_by_pot(relu, tf.maximum(-relu_e, 0)), relu)
    relu = tf.bitwise.right_shift(relu + (1 << 15), tf.constant(1, _I64))
    out = rounding_divide_by_pot(_sdhm16(relu, preshift), -out_e) + _i64(z_out)
    return _clamp(out, -128, 127)


# gemmlowp fixed point (FixedPoint<int32, k>): raw int32 values in int64 tensors


def _exp_interval(a):
    """``exp_on_interval_between_negative_one_quarter_and_0_excl`` (0 integer bits)."""
    mul = saturating_rounding_doubling_high_mul
    constant_term, one_third = 1895147668, 715827883
    x = a + (1 << 28)
    x2 = mul(x, x)
    x3 = mul(x2, x)
    x4 = mul(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(mul(x4_over_4 + x3, one_third) + x2, 1)
    return constant_term + mul(constant_term, x + poly)


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401),
               (4, 242))


def _exp_on_negative_values(a, integer_bits: int):
    """gemmlowp's ``exp_on_negative_values`` of a FixedPoint<int32, integer_bits> (result: 0 integer bits)."""
    fractional = 31 - integer_bits
    quarter = 1 << (fractional - 2)
    mod_minus_quarter = tf.bitwise.bitwise_and(a, quarter - 1) - quarter
    result = _exp_interval(_saturating_shift_left(mod_minus_quarter, integer_bits))
    remainder = mod_minus_quarter - a
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = tf.bitwise.bitwise_and(remainder, 1 << (fractional + exponent))
            result = tf.where(tf.not_equal(bit, 0), saturating_rounding_doubling_high_mul(result, multiplier), result)
    if integer_bits > 5:
        result = tf.where(a < -(1 << (36 - integer_bits)), tf.zeros_like(result), result)
    return tf.where(tf.equal(a, 0), tf.constant(_INT32_MAX, _I64), result)


def _one_over_one_plus_x(a):
    """gemmlowp's ``one_over_one_plus_x_for_x_in_0_1`` (Newton-Raphson, 3 steps)."""
    mul = saturating_rounding_doubling_high_mul
    total = a + _INT32_MAX
    half = tf.truncatediv(total + tf.where(total >= 0, tf.constant(1, _I64), tf.constant(-1, _I64)), 2)
    x = 1515870810 + mul(half, -1010580540)
    for _ in range(3):
        x = x + _saturating_shift_left(mul(x, (1 << 29) - mul(half, x)), 2)
    return _saturating_shift_left(x, 1)


@_kernel
def logistic_table(s_in, z_in):
    """The 256 outputs of TFLM's int8 LOGISTIC (``reference_integer_ops::Logistic``: gemmlowp's
    fixed-point logistic on a Q4.27 input), output scale 1/256, zero point -128."""
    real = tf.cast(s_in, _F64) * float(1 << 27)
    bits = tf.bitcast(real, _I64)
    shift = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, tf.constant(52, _I64)), 0x7FF) - 1022
    multiplier = _i64(tf.floor(real * _pow2(31 - shift) + 0.5))  # frexp, round(q 2^31): no renormalization
    radius = _i64(tf.floor(15.0 * float(1 << 27) / _pow2(shift)))
    value = _levels() - _i64(z_in)
    a = multiply_by_quantized_multiplier(value, multiplier, shift)
    positive = a > 0
    magnitude = tf.where(positive, a, -a)
    on_positive = _one_over_one_plus_x(_exp_on_negative_values(-magnitude, 4))
    result = tf.where(tf.equal(a, 0), tf.constant(1 << 30, _I64),
                      tf.where(positive, on_positive, _INT32_MAX - on_positive))
    out = _clamp(rounding_divide_by_pot(result, 23) - 128, -128, 127)
    return tf.where(value <= -radius, tf.constant(-128, _I64), tf.where(value >= radius, tf.constant(127, _I64), out))


def logistic_table_float(s_in, z_in):
    """The 256 outputs of LiteRT's int8 LOGISTIC (its reference and builtin kernels: a table
    filled in float32, ``round(sigmoid(s_in (q - z_in)) 256) - 128``, ties away from zero).

    Example:
        >>> table = logistic_table_float(0.1, 0)
        >>> int(table.shape[0]), int(table[128]), int(table[128 + 10])    # levels 0 and 10: sigmoid(0), sigmoid(1)
        (256, 0, 59)
    """
    f32 = tf.float32
    x = tf.cast(s_in, f32) * tf.cast(_levels() - _i64(z_in), f32)
    y = 1.0 / (1.0 + tf.exp(-x)) * 256.0
    rounded = tf.sign(y) * tf.floor(tf.abs(y) + 0.5)
    return _clamp(_i64(rounded) - 128, -128, 127)


@_kernel
def softmax(levels, s_in, beta: float = 1.0):
    """int8 SOFTMAX over the last axis (``reference_ops::Softmax``, LiteRT's reference kernel and
    TFLM's): differences to the row maximum scaled to Q5.26 by ``beta s_in``, gemmlowp's
    ``exp_on_negative_values``, their sum in Q12.19, its reciprocal by Newton-Raphson, output
    scale 1/256 and zero point -128; differences below ``diff_min`` give -128."""
    real = tf.minimum(float(beta) * tf.cast(s_in, _F64) * float(1 << 26), float(2**31 - 1))
    multiplier, left_shift = quantize_multiplier(real)
    radius = _i64(tf.floor(31.0 * float(1 << 26) / _pow2(left_shift)))
    levels = _i64(levels)
    diff = levels - tf.reduce_max(levels, axis=-1, keepdims=True)
    exps = _exp_on_negative_values(saturating_rounding_doubling_high_mul(_shift_left(diff, left_shift), multiplier), 5)
    kept = diff >= -radius
    total = tf.reduce_sum(tf.where(kept, rounding_divide_by_pot(exps, 12), tf.zeros_like(exps)), axis=-1, keepdims=True)
    # CountLeadingZeros of the (positive) uint32 sum, from its float64 exponent (exact for integers)
    log2 = tf.bitwise.bitwise_and(tf.bitwise.right_shift(tf.bitcast(tf.cast(total, _F64), _I64),
                                                         tf.constant(52, _I64)), 0x7FF) - 1023
    headroom = 31 - log2
    scale = _one_over_one_plus_x(tf.bitwise.left_shift(total, headroom) - (1 << 31))
    exponent = (12 - headroom) + 31 - 8
    out = rounding_divide_by_pot(saturating_rounding_doubling_high_mul(scale, exps), exponent) - 128
    return tf.where(kept, _clamp(out, -128, 127), tf.constant(-128, _I64))

"""Dense layers exported as 1x1 convolutions, so TFLite Micro and LiteRT compute them alike.

For int8 FULLY_CONNECTED, LiteRT's reference kernel (since LiteRT 1.3, "Make the
fully_connected ref kernel do requant in float") requantizes the int32 accumulator in double
precision with one rounding, ``round(acc * s_in * s_w / s_out)``, while TFLite Micro keeps the
fixed-point multiplier of Jacob et al. (CVPR 2018, eq. 5-6): ``SaturatingRoundingDoublingHighMul``
then ``RoundingDivideByPOT``, two roundings. An accumulator within ``2**(shift - 1)`` of a half
rounds differently: 1 LSB on 0.03-0.06% of the outputs (measured on every variant: per-tensor
and per-channel, with and without bias and ReLU; benchmarks/NOTES.md). Both runtimes' CONV_2D
still use the fixed-point path, so a Dense on ``[batch, features]`` written as Reshape ->
1x1 Conv2D -> Reshape computes what TFLite Micro's FULLY_CONNECTED computes, on both.
"""

from __future__ import annotations

import keras

__all__ = ["dense_as_conv"]


def dense_as_conv(model) -> tuple[keras.Model, int]:
    """A copy of ``model`` whose plain Dense layers on 2-D inputs are 1x1 convolutions.

    The copy computes the same function (same weights, activation and bias); only the ops the
    TFLite converter emits change (RESHAPE, CONV_2D, RESHAPE instead of FULLY_CONNECTED).
    Dense layers on higher-rank inputs and subclasses of Dense (quantized, pruned or hashed
    variants) are left alone.

    Returns:
        ``(model, how many Dense layers were rewritten)``; the model itself when none was.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu")])
        >>> conv, count = dense_as_conv(model)
        >>> x = np.ones((2, 4), "float32")
        >>> count, bool(np.allclose(conv.predict(x, verbose=0), model.predict(x, verbose=0)))
        (1, True)
    """
    from tfcompress.core import rebuild, trace

    rewritten = 0
    seen: dict[str, int] = {}  # members of an ensemble may each have a "fc1"

    def replace(node, args, kwargs):
        nonlocal rewritten
        layer = node.op
        if type(layer) is not keras.layers.Dense or kwargs or len(args) != 1 or len(args[0].shape) != 2:
            return None
        units, features = layer.units, int(args[0].shape[-1])
        seen[layer.name] = seen.get(layer.name, 0) + 1
        base = layer.name if seen[layer.name] == 1 else f"{layer.name}_{seen[layer.name] - 1}"
        conv = keras.layers.Conv2D(units, 1, activation=layer.activation, use_bias=layer.use_bias,
                                   dtype=layer.dtype_policy, name=f"{base}_as_conv")
        x = keras.layers.Reshape((1, 1, features), name=f"{base}_to_4d")(args[0])
        y = conv(x)
        kernel, *bias = layer.get_weights()
        conv.set_weights([kernel.reshape(1, 1, features, units), *bias])
        rewritten += 1
        return keras.layers.Reshape((units,), name=f"{base}_to_2d")(y)

    converted = rebuild(trace(model), replace)
    return (converted, rewritten) if rewritten else (model, 0)

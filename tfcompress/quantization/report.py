"""The `CompressionReport` of ``quantize``: read from the QAT model it built, layer by layer.

For every layer of the float model (after ``strip_all``, as ``quantize`` sees it) that QAT
changes or leaves in float:

- ``quantized``: a Conv2D / DepthwiseConv2D / Dense computed as its int8 kernel (``QuantizedLayer``),
  with the BatchNormalization folded into it and the activation fused after it, if any;
- ``folded`` / ``fused``: a BatchNormalization or activation that became part of that kernel;
- ``range``: a layer whose int8 output range QAT learns (``ActivationQuantizer``, shared by
  the inputs and output of a Concatenate / Maximum / Minimum);
- ``skipped``: a layer of ``skip_layers``, left in float, so the int8 export needs
  ``allow_float_fallback=True``.

Layers that pass int8 values through unchanged (Flatten, Reshape, pooling of one value...) are
not listed.

Example:

>>> import keras, tfcompress
>>> x = keras.Input((8, 8, 1))
>>> h = keras.layers.Conv2D(4, 3, name="conv")(x)
>>> h = keras.layers.BatchNormalization(name="bn")(h)
>>> h = keras.layers.ReLU(name="relu")(h)
>>> h = keras.layers.Flatten(name="flat")(h)
>>> model = keras.Model(x, keras.layers.Dense(2, name="head")(h))
>>> qat = tfcompress.quantize(model, skip_layers=["head"], verbose=0)
>>> [(row.layer, row.action) for row in qat.compression_report.rows]
[('conv', 'quantized'), ('bn', 'folded'), ('relu', 'fused'), ('head', 'skipped')]
"""

from __future__ import annotations

import keras

from tfcompress.core import iter_layers
from tfcompress.layers.fake_quant import ActivationQuantizer, QuantizedLayer
from tfcompress.report import SKIPPED, CompressionReport


def quantization_report(source: keras.Model, qat: keras.Model, skip: set[str]) -> CompressionReport:
    """What ``quantize`` did to each layer of ``source`` to make ``qat`` (module docstring).

    Example:
        >>> from tfcompress.quantization import quantize
        >>> x = keras.Input((8,))
        >>> model = keras.Model(x, keras.layers.Dense(4, name="fc")(keras.layers.Dense(8, "relu", name="hidden")(x)))
        >>> report = quantization_report(model, quantize(model, verbose=0), skip=set())
        >>> [(row.layer, row.action) for row in report.rows]
        [('hidden', 'quantized'), ('fc', 'quantized')]
    """
    report = CompressionReport("quantize")
    built = {layer.name: layer for layer in iter_layers(qat, models=False)}
    kernels = {layer.layer.name: layer for layer in built.values() if isinstance(layer, QuantizedLayer)}
    folded = {layer.batch_norm.name: name for name, layer in kernels.items() if layer.batch_norm is not None}
    quantizers = {name for name, layer in built.items() if isinstance(layer, ActivationQuantizer)}
    for layer in iter_layers(source, models=False):
        name, kind = layer.name, type(layer).__name__
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if name in skip:
            report.add(name, kind, SKIPPED, "in skip_layers: it stays in float",
                       "export with to_tflite(..., allow_float_fallback=True), or drop it from skip_layers",
                       important=True)
        elif name in kernels:
            q = kernels[name]
            parts = ["int8 kernel, per-channel weights"]
            if q.batch_norm is not None:
                parts.append(f"{q.batch_norm.name} folded")
            if q.activation != "linear":
                parts.append(f"{q.activation} fused")
            report.add(name, kind, "quantized", ", ".join(parts))
        elif name in folded:
            report.add(name, kind, "folded", f"into {folded[name]}'s int8 kernel")
        elif name not in built:
            # absorbed into the kernel before it (its fused activation), as TFLite fuses it
            report.add(name, kind, "fused", "into the int8 kernel before it")
        elif f"quantize_{name}" in quantizers:
            report.add(name, kind, "range", "its int8 output range is learned during training")
    return report

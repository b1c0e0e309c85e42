"""Ternary Dense / Conv2D layers: Ternary Weight Networks (Li et al. 2016, arXiv:1605.04711).

The latent float kernel W is trained; every call uses alpha_c sign(W) 1{|W| > Delta_c} per
output channel c, with Delta_c = t * E|W_c| (eq. 9, t = ``threshold_factor`` = 0.7) and
alpha_c = mean of |W| above Delta_c (eq. 5), through `tfcompress.quantizers.TernaryWeight`
(straight-through gradient). An optional ``input_quantizer="ste_sign"`` binarizes the inputs.
Exported to int8 TFLite with `tfcompress.export.to_tflite` (directly or after
`tfcompress.layers.binary.materialize`), each channel's int8 weights are exactly
{-127, 0, 127} with scale alpha_c / 127.
"""

from __future__ import annotations

from typing import Any

import keras

from tfcompress import quantizers
from tfcompress.layers._quantized_kernel import _check_no_lora, _QuantizedKernelMixin


class _TernaryMixin(_QuantizedKernelMixin):
    def _init_ternary(self, threshold_factor: float, input_quantizer) -> None:
        self._init_quantizers(quantizers.TernaryWeight(threshold_factor), input_quantizer, levels=3)
        self.threshold_factor = self.kernel_quantizer.threshold_factor

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            **self._quantizer_config(),
            "threshold_factor": self.threshold_factor,
        }


@keras.saving.register_keras_serializable(package="tfcompress")
class TernaryDense(_TernaryMixin, keras.layers.Dense):
    """Dense with TWN ternary weights {-a_c, 0, a_c} per unit c.

    Args:
        units: output size.
        threshold_factor: t in Delta_c = t * E|W_c| (TWN eq. 9; 0.7).
        input_quantizer: None, or ``"ste_sign"`` to binarize the inputs.
        **kwargs: those of `keras.layers.Dense`.

    Example:
        >>> import numpy as np
        >>> layer = TernaryDense(4)
        >>> model = keras.Sequential([keras.Input((8,)), layer])
        >>> kernel = keras.ops.convert_to_numpy(layer.tfcompress_effective_weights()[0])
        >>> [len(np.unique(kernel[:, c])) <= 3 for c in range(4)]          # {-a_c, 0, a_c} per unit
        [True, True, True, True]
        >>> [len(set(abs(kernel[:, c][kernel[:, c] != 0]).round(6))) for c in range(4)]    # one a_c per unit
        [1, 1, 1, 1]
    """

    def __init__(self, units: int, threshold_factor: float = 0.7, input_quantizer=None, **kwargs):
        _check_no_lora(kwargs, "TernaryDense")
        super().__init__(units, **kwargs)
        self._init_ternary(threshold_factor, input_quantizer)


@keras.saving.register_keras_serializable(package="tfcompress")
class TernaryConv2D(_TernaryMixin, keras.layers.Conv2D):
    """Conv2D with TWN ternary weights {-a_c, 0, a_c} per filter c. Arguments as
    `TernaryDense` plus those of `keras.layers.Conv2D`.

    Example:
        >>> import numpy as np
        >>> layer = TernaryConv2D(4, 3, threshold_factor=0.5)
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), layer])
        >>> model(np.ones((1, 8, 8, 1), "float32")).shape
        TensorShape([1, 6, 6, 4])
        >>> layer.kernel_quantizer.threshold_factor
        0.5
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        threshold_factor: float = 0.7,
        input_quantizer=None,
        **kwargs,
    ):
        super().__init__(filters, kernel_size, **kwargs)
        self._init_ternary(threshold_factor, input_quantizer)


__all__ = ["TernaryConv2D", "TernaryDense"]

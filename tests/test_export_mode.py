"""The QAT export switch is scoped state (a ContextVar): set inside the block, in its thread only."""

from __future__ import annotations

import threading

import keras
import numpy as np

from tfcompress.layers.fake_quant import export_mode, exporting
from tfcompress.quantization.qat import quantize


def test_export_mode_is_scoped_nested_and_per_thread():
    assert not exporting()
    seen = []
    with export_mode():
        assert exporting()
        with export_mode():
            assert exporting()
        assert exporting()  # the inner block restores the outer one
        worker = threading.Thread(target=lambda: seen.append(exporting()))
        worker.start()
        worker.join()
    assert not exporting()
    assert seen == [False]  # another thread is not exporting
    try:
        with export_mode():
            raise RuntimeError
    except RuntimeError:
        pass
    assert not exporting()


def test_export_mode_freezes_preserve_sparsity_kernels():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(4, name="fc")(inp))
    kernel = model.get_layer("fc").kernel
    kernel.assign(np.where(np.arange(24).reshape(6, 4) % 3 == 0, 0.0, kernel.numpy()))
    qat = quantize(model, preserve_sparsity=True)
    layer = qat.get_layer("quant_fc")
    folded = keras.ops.convert_to_numpy(layer.folded_kernel_and_bias()[0])
    with export_mode(qat):
        layer.layer.kernel.assign(layer.layer.kernel.numpy() * 2.0)  # changes after entering
        frozen = keras.ops.convert_to_numpy(layer.folded_kernel_and_bias()[0])
    np.testing.assert_array_equal(frozen, folded)  # the kernel computed when the block began
    after = keras.ops.convert_to_numpy(layer.folded_kernel_and_bias()[0])
    assert not np.array_equal(after, folded)

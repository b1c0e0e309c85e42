"""recalibrate_batchnorm sets moving statistics to the data's statistics, layer after layer."""

from __future__ import annotations

import keras
import numpy as np

from tfcompress.batchnorm import recalibrate_batchnorm


def test_moving_statistics_equal_numpy_batch_statistics():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, name="conv1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1", momentum=0.99)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(5, 3, name="conv2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    model = keras.Model(inputs, h)
    x = np.random.default_rng(0).normal(2.0, 3.0, (64, 6, 6, 3)).astype(np.float32)

    assert recalibrate_batchnorm(model, x) == 2
    bn1, bn2 = model.get_layer("bn1"), model.get_layer("bn2")
    assert bn1.momentum == 0.99  # restored
    conv1_out = keras.Model(inputs, model.get_layer("conv1").output).predict(x, verbose=0)
    np.testing.assert_allclose(bn1.moving_mean.numpy(), conv1_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), conv1_out.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)
    # bn2 sees conv2 applied to inputs normalised by the *new* bn1 statistics.
    conv2_in = keras.Model(inputs, model.get_layer("conv2").output).predict(x, verbose=0)
    np.testing.assert_allclose(bn2.moving_mean.numpy(), conv2_in.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
    # In inference the BN outputs are now standardised over x.
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-2)

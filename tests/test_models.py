"""tfcompress.models: the reference models build, predict, and have the documented sizes."""

from __future__ import annotations

import keras
import numpy as np
from layer_harness import assert_keras_roundtrip

from tfcompress.models import lenet5_caffe, mobilenet_v2_tiny, residual_cnn


def test_lenet5_caffe_structure_params_and_predict(tmp_path):
    model = lenet5_caffe()
    assert model.count_params() == 431_080
    # 520 + 25,050 + 400,500 + 5,010, written out from the architecture.
    assert model.count_params() == (5 * 5 * 1 * 20 + 20) + (5 * 5 * 20 * 50 + 50) + (4 * 4 * 50 * 500 + 500) + (500 * 10 + 10)
    assert [type(layer).__name__ for layer in model.layers] == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense",
    ]
    assert model.get_layer("conv1").padding == "valid"
    assert model.get_layer("logits").activation is keras.activations.linear  # logits, no softmax
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype("float32")
    y = model.predict(x, verbose=0)
    assert y.shape == (3, 10)
    assert not np.allclose(y.sum(axis=1), 1.0)  # not softmax probabilities

    assert_keras_roundtrip(model, x, tmp_path, rtol=1e-6, atol=1e-6, name="lenet")


def test_lenet5_caffe_other_shapes():
    model = lenet5_caffe(input_shape=(32, 32, 3), num_classes=4, name="lenet_rgb")
    assert model.name == "lenet_rgb"
    assert model.output_shape == (None, 4)
    # 32 -> 28 -> 14 -> 10 -> 5: flatten has 5*5*50 features.
    assert model.get_layer("fc1").kernel.shape == (5 * 5 * 50, 500)


def test_lenet5_caffe_other_widths():
    # the 6-13-55 sub-architecture of the Bayesian benchmark: 30.4x fewer parameters than 431,080
    model = lenet5_caffe(conv1=6, conv2=13, fc1=55)
    assert [model.get_layer(name).kernel.shape[-1] for name in ("conv1", "conv2", "fc1")] == [6, 13, 55]
    assert model.count_params() == (5 * 5 * 1 * 6 + 6) + (5 * 5 * 6 * 13 + 13) + (4 * 4 * 13 * 55 + 55) + (55 * 10 + 10)
    assert model.count_params() == 14_174


def test_residual_cnn_has_required_layers_and_predicts():
    model = residual_cnn()
    kinds = {type(layer).__name__ for layer in model.layers}
    for required in ("Add", "Concatenate", "DepthwiseConv2D", "BatchNormalization", "GlobalAveragePooling2D"):
        assert required in kinds
    w = 8
    expected = (
        3 * 3 * 3 * w + 4 * w  # stem conv (no bias) + BN
        + 3 * 3 * w + 4 * w  # depthwise + BN
        + w * w + 4 * w  # pointwise + BN
        + 3 * 3 * w * w + w  # branch conv
        + 3 * 3 * 2 * w * 2 * w + 4 * 2 * w  # head conv + BN
        + 2 * w * 10 + 10  # logits
    )
    assert model.count_params() == expected == 3570
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype("float32")
    assert model.predict(x, verbose=0).shape == (2, 10)
    assert residual_cnn(input_shape=(16, 16, 1), num_classes=3, width=4).output_shape == (None, 3)


def test_mobilenet_v2_tiny_builds_without_download_and_predicts():
    model = mobilenet_v2_tiny()
    assert model.input_shape == (None, 96, 96, 3)
    assert model.output_shape == (None, 10)
    head = model.layers[-1]
    assert isinstance(head, keras.layers.Dense)
    assert head.kernel.shape == (1280, 10)  # MobileNetV2 keeps 1280 last channels for alpha < 1
    assert head.activation is keras.activations.linear
    # Value pinned for keras 3.15 MobileNetV2(alpha=0.35, classes=10); the stem has
    # make_divisible(32 * 0.35, 8) = 16 filters: 3*3*3*16 weights.
    assert model.count_params() == 423_018
    assert model.layers[1].kernel.shape == (3, 3, 3, 16)
    y = model.predict(np.zeros((1, 96, 96, 3), dtype="float32"), verbose=0)
    assert y.shape == (1, 10) and np.all(np.isfinite(y))

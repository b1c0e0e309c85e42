"""tfcompress.zoo: the MLPerf Tiny reference networks have the references' exact sizes; every zoo net
builds and predicts.

The expected parameter counts were counted from the weights of the trained reference models in
mlcommons/tiny at tag v1.0 (``benchmark/training/*/trained_models/``): ``pretrainedResnet.h5``
(78,666), the ``kws_ref_model`` SavedModel checkpoint (24,908), ``vww_96.h5`` (221,794) and
``ad01.h5`` (269,992); the weight shapes match tensor for tensor.
"""

from __future__ import annotations

import doctest

import keras
import numpy as np
import pytest

from tfcompress import zoo

# name: (builder, total params, trainable params, input shape, output shape)
REFERENCES = {
    "resnet8": (zoo.resnet8, 78_666, 78_186, (32, 32, 3), (10,)),
    "ds_cnn": (zoo.ds_cnn, 24_908, 23_756, (49, 10, 1), (12,)),
    "mobilenet_v1": (zoo.mobilenet_v1, 221_794, 216_322, (96, 96, 3), (2,)),
    "fc_autoencoder": (zoo.fc_autoencoder, 269_992, 267_928, (640,), (640,)),
}


def _trainable(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.parametrize("name", list(REFERENCES))
def test_reference_networks_match_the_mlperf_tiny_parameter_counts(name):
    build, total, trainable, input_shape, output_shape = REFERENCES[name]
    keras.utils.set_random_seed(0)
    model = build()
    assert isinstance(model, keras.Model) and type(model).__name__ == "Functional"
    assert model.count_params() == total
    assert _trainable(model) == trainable
    assert tuple(model.input_shape[1:]) == input_shape
    assert tuple(model.output_shape[1:]) == output_shape
    # every layer is named by the builder (no Keras auto names such as "conv2d_3")
    auto = [layer.name for layer in model.layers
            if layer.name.rstrip("_0123456789") in {"conv2d", "dense", "batch_normalization",
                                                    "activation", "add", "depthwise_conv2d"}]
    assert not auto, auto
    x = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32)
    y = model.predict(x, verbose=0, batch_size=2)
    assert y.shape == (2, *output_shape) and np.isfinite(y).all()
    if name == "fc_autoencoder":
        assert model.layers[-1].get_config()["activation"] == "linear"
    else:
        assert model.layers[-1].get_config()["activation"] == "softmax"
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)


def test_reference_networks_at_other_sizes():
    assert zoo.resnet8((32, 32, 3), classes=100).output_shape == (None, 100)
    assert zoo.ds_cnn(classes=35).output_shape == (None, 35)
    small = zoo.mobilenet_v1((64, 64, 3), classes=3)
    assert small.output_shape == (None, 3)
    assert small.count_params() == 221_794 + (3 - 2) * 257  # the size does not change the weights
    assert zoo.fc_autoencoder(128).output_shape == (None, 128)


@pytest.mark.parametrize("name", list(zoo.APPLICATIONS))
def test_applications_build_and_predict_at_32x32(name):
    model = zoo.ZOO[name]()
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 10)
    y = keras.ops.convert_to_numpy(model(np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32),
                                         training=False))
    assert y.shape == (1, 10) and np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)


def test_zoo_lists_twelve_networks_and_applications_checks_its_arguments():
    assert len(zoo.ZOO) == 12
    assert set(REFERENCES) <= set(zoo.ZOO)
    assert zoo.applications("MobileNetV2").count_params() == zoo.applications("mobilenet_v2").count_params()
    with pytest.raises(ValueError, match="unknown application"):
        zoo.applications("vgg16")
    with pytest.raises(ValueError, match="at least 32x32"):
        zoo.applications("mobilenet_v2", (16, 16, 3))


def test_docstring_examples_run():
    result = doctest.testmod(zoo, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0

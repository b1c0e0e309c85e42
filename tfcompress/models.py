"""Reference models used by the tests, examples and benchmarks (plain Keras 3, channels-last).

* :func:`lenet5_caffe`: LeNet-5 as in Caffe's MNIST example (``examples/mnist/lenet.prototxt``),
  the variant the pruning literature reports on (Han et al., 2015, "Learning both Weights and
  Connections for Efficient Neural Networks", Table 1 "LeNet-5": 431K weights; Louizos,
  Ullrich and Welling, 2017, "Bayesian Compression for Deep Learning", Table 1).
* :func:`residual_cnn`: a small Functional CNN holding the layer kinds a full-int8 export must
  handle: a residual ``Add``, a ``Concatenate``, a ``DepthwiseConv2D``, ``BatchNormalization``
  and ``GlobalAveragePooling2D``.
* :func:`mobilenet_v2_tiny`: ``keras.applications.MobileNetV2`` at width 0.35 on 96x96 inputs
  (Sandler et al., 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks"), randomly
  initialised (``weights=None``: nothing is downloaded).

All return logits (no softmax): train them with
``SparseCategoricalCrossentropy(from_logits=True)``; argmax, and so top-1 accuracy and
agreement, is the same either way, and a final softmax would only cost an extra op at export.
"""

from __future__ import annotations

import keras

__all__ = ["lenet5_caffe", "mobilenet_v2_tiny", "residual_cnn"]


def lenet5_caffe(
    input_shape: tuple[int, int, int] = (28, 28, 1),
    num_classes: int = 10,
    name: str = "lenet5_caffe",
    *,
    conv1: int = 20,
    conv2: int = 50,
    fc1: int = 500,
) -> keras.Sequential:
    """LeNet-5-Caffe: conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, dense 500, dense classes.

    ``conv1``, ``conv2`` and ``fc1`` set other widths, e.g. the sub-architecture a pruning method
    cuts to, trained from scratch as its capacity control.

    Both convolutions are ``valid`` with ReLU, as in Caffe's ``lenet.prototxt`` (whose
    reference network puts ReLU only after ``ip1``; the ReLU after the convolutions follows
    the Keras / pruning-paper convention and adds no parameters). On 28x28x1 inputs it has
    431,080 parameters: 520 + 25,050 + 400,500 + 5,010.

    The last layer returns logits (no softmax).

    Example:
        >>> model = lenet5_caffe()
        >>> model.output_shape, model.count_params()
        ((None, 10), 431080)
        >>> lenet5_caffe(conv1=4, conv2=8, fc1=16).count_params()
        3146
    """
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=tuple(input_shape)),
            layers.Conv2D(conv1, 5, padding="valid", activation="relu", name="conv1"),
            layers.MaxPooling2D(2, name="pool1"),
            layers.Conv2D(conv2, 5, padding="valid", activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(fc1, activation="relu", name="fc1"),
            layers.Dense(num_classes, name="logits"),
        ],
        name=name,
    )


def residual_cnn(
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    width: int = 8,
    name: str = "residual_cnn",
) -> keras.Model:
    """A small Functional CNN with a residual Add, a Concatenate, DepthwiseConv2D, BN and GAP.

    Structure (``width`` = 8 channels by default)::

        input -> conv3x3(w) -> BN -> ReLU                                   = stem
        stem -> depthwise3x3 -> BN -> ReLU -> conv1x1(w) -> BN; Add(stem, .) -> ReLU = res
        res -> conv3x3(w, ReLU);  Concatenate(res, .) -> 2w channels        = cat
        cat -> max-pool 2 -> conv3x3(2w) -> BN -> ReLU -> GlobalAveragePooling2D -> dense(classes)

    Convolutions followed by BN have no bias (BN's beta is the bias); the BNs fold into them at
    export. Returns logits (no softmax).

    Example:
        >>> model = residual_cnn(input_shape=(16, 16, 3), num_classes=4, width=4)
        >>> model.output_shape
        (None, 4)
        >>> sorted({type(layer).__name__ for layer in model.layers} & {"Add", "Concatenate", "DepthwiseConv2D"})
        ['Add', 'Concatenate', 'DepthwiseConv2D']
    """
    layers = keras.layers
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    stem = layers.ReLU(name="stem_relu")(x)

    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="res_dw")(stem)
    y = layers.BatchNormalization(name="res_dw_bn")(y)
    y = layers.ReLU(name="res_dw_relu")(y)
    y = layers.Conv2D(width, 1, use_bias=False, name="res_pw")(y)
    y = layers.BatchNormalization(name="res_pw_bn")(y)
    res = layers.Add(name="res_add")([stem, y])
    res = layers.ReLU(name="res_relu")(res)

    branch = layers.Conv2D(width, 3, padding="same", activation="relu", name="branch_conv")(res)
    cat = layers.Concatenate(name="concat")([res, branch])

    z = layers.MaxPooling2D(2, name="pool")(cat)
    z = layers.Conv2D(2 * width, 3, padding="same", use_bias=False, name="head_conv")(z)
    z = layers.BatchNormalization(name="head_bn")(z)
    z = layers.ReLU(name="head_relu")(z)
    z = layers.GlobalAveragePooling2D(name="gap")(z)
    outputs = layers.Dense(num_classes, name="logits")(z)
    return keras.Model(inputs, outputs, name=name)


def mobilenet_v2_tiny(
    input_shape: tuple[int, int, int] = (96, 96, 3),
    num_classes: int = 10,
    alpha: float = 0.35,
    classifier_activation: str | None = None,
) -> keras.Model:
    """``keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None)``.

    Randomly initialised (no download). Keras' own default ends in a softmax; here
    ``classifier_activation=None`` by default so it returns logits like the other reference
    models (pass ``"softmax"`` for the exact ``keras.applications`` default).

    Example:
        >>> model = mobilenet_v2_tiny(input_shape=(32, 32, 3), num_classes=4)
        >>> model.input_shape, model.output_shape
        ((None, 32, 32, 3), (None, 4))
    """
    return keras.applications.MobileNetV2(
        input_shape=tuple(input_shape),
        alpha=alpha,
        weights=None,
        classes=num_classes,
        classifier_activation=classifier_activation,
    )

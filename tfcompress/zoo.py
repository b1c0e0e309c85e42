"""A model zoo: the four MLPerf Tiny v1.0 reference networks, and small ``keras.applications`` nets.

The MLPerf Tiny benchmark (Banbury et al., 2021, "MLPerf Tiny Benchmark", NeurIPS Datasets and
Benchmarks; https://github.com/mlcommons/tiny, tag ``v1.0``, ``benchmark/training/``) fixes one
reference model per task. The builders below follow the reference training scripts layer by
layer (same layer types, widths, kernel sizes, strides, paddings, biases and heads), so their
parameter counts equal those of the reference trained models shipped with the benchmark
(counted from the weights of ``trained_models/``; Keras counts BatchNormalization's moving mean
and variance too):

=====================  ================================  ==========================  =========
builder                task                              reference                   params
=====================  ================================  ==========================  =========
:func:`resnet8`        image classification (CIFAR-10)   ``pretrainedResnet.h5``     78,666
:func:`ds_cnn`         keyword spotting (Speech Cmds)    ``kws_ref_model``           24,908
:func:`mobilenet_v1`   visual wake words (COCO person)   ``vww_96.h5``               221,794
:func:`fc_autoencoder` anomaly detection (ToyADMOS)      ``ad01.h5``                 269,992
=====================  ================================  ==========================  =========

:func:`applications` builds randomly initialised ``keras.applications`` networks
(``weights=None``: nothing is downloaded) at small inputs, and :data:`ZOO` maps a name to a
builder for all twelve networks (each callable with no arguments).

The classifiers end in a softmax, as the references do; the autoencoder's output is linear.
Layers that carry an L2 ``kernel_regularizer`` in the references get one here too (strength
``weight_decay``, 1e-4 as in the references; ``None`` for none): it changes no parameter count.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import keras

__all__ = [
    "APPLICATIONS",
    "ZOO",
    "applications",
    "ds_cnn",
    "fc_autoencoder",
    "mobilenet_v1",
    "resnet8",
]

layers = keras.layers


def _l2(weight_decay: float | None):
    return keras.regularizers.L2(weight_decay) if weight_decay else None


# ------------------------------------------------------------------------------------ ResNet-8


def resnet8(
    input_shape: tuple[int, int, int] = (32, 32, 3),
    classes: int = 10,
    *,
    filters: int = 16,
    weight_decay: float | None = 1e-4,
    name: str = "resnet8",
) -> keras.Model:
    """MLPerf Tiny image classification: ResNet-8 for CIFAR-10 (78,666 parameters).

    Source: mlcommons/tiny v1.0, ``benchmark/training/image_classification/keras_model.py``,
    ``resnet_v1_eembc()`` (EEMBC's "CIFAR10_ResNetv1"); Banbury et al. 2021, Table 1 ("ResNet-8").

    Structure (``filters`` = 16)::

        conv3x3(16) -> BN -> ReLU                                                       = stem
        stack 1: conv3x3(16) -> BN -> ReLU -> conv3x3(16) -> BN; Add(identity) -> ReLU
        stack 2: conv3x3(32, stride 2) -> BN -> ReLU -> conv3x3(32) -> BN;
                 Add(conv1x1(32, stride 2) projection) -> ReLU
        stack 3: as stack 2 with 64 filters
        AveragePooling2D(8) -> Flatten -> Dense(classes, softmax)

    Every convolution is ``same``-padded with a bias and ``he_normal`` initialisation, as in the
    reference; the 1x1 projection shortcuts have no BatchNormalization. On 32x32x3 inputs with
    10 classes: 78,666 parameters (78,186 trainable), equal to the reference's
    ``trained_models/pretrainedResnet.h5``.

    Example:
        >>> model = resnet8()
        >>> model.count_params()
        78666
        >>> model.output_shape
        (None, 10)
    """
    reg = _l2(weight_decay)

    def conv(x, n, k, stride, label):
        return layers.Conv2D(n, k, strides=stride, padding="same", kernel_initializer="he_normal",
                             kernel_regularizer=reg, name=label)(x)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = conv(inputs, filters, 3, 1, "stem_conv")
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for stack, width in enumerate((filters, 2 * filters, 4 * filters), start=1):
        stride = 1 if stack == 1 else 2
        p = f"stack{stack}"
        y = conv(x, width, 3, stride, f"{p}_conv1")
        y = layers.BatchNormalization(name=f"{p}_bn1")(y)
        y = layers.Activation("relu", name=f"{p}_relu1")(y)
        y = conv(y, width, 3, 1, f"{p}_conv2")
        y = layers.BatchNormalization(name=f"{p}_bn2")(y)
        if stack != 1:  # the shape changes: 1x1 projection shortcut
            x = conv(x, width, 1, stride, f"{p}_shortcut")
        x = layers.Add(name=f"{p}_add")([x, y])
        x = layers.Activation("relu", name=f"{p}_relu2")(x)
    pool = int(min(x.shape[1], x.shape[2]))
    x = layers.AveragePooling2D(pool_size=pool, name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(classes, activation="softmax", kernel_initializer="he_normal",
                           name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


# -------------------------------------------------------------------------------------- DS-CNN


def ds_cnn(
    input_shape: tuple[int, int, int] = (49, 10, 1),
    classes: int = 12,
    *,
    filters: int = 64,
    blocks: int = 4,
    weight_decay: float | None = 1e-4,
    name: str = "ds_cnn",
) -> keras.Model:
    """MLPerf Tiny keyword spotting: DS-CNN on 49x10 MFCCs, 12 classes (24,908 parameters).

    Source: mlcommons/tiny v1.0, ``benchmark/training/keyword_spotting/keras_model.py``,
    ``get_model()`` with ``model_architecture="ds_cnn"`` (after Zhang et al. 2017, "Hello Edge:
    Keyword Spotting on Microcontrollers", DS-CNN-S); Banbury et al. 2021, Table 1.

    Structure::

        conv(64, 10x4, stride 2, same) -> BN -> ReLU -> Dropout(0.2)
        4 x [DepthwiseConv2D(3x3, same) -> BN -> ReLU -> conv1x1(64) -> BN -> ReLU]
        Dropout(0.4) -> AveragePooling2D((H // 2, W // 2)) -> Flatten -> Dense(classes, softmax)

    The input is (spectrogram length 49, 10 MFCC coefficients, 1) for 1 s clips with 40 ms windows
    every 20 ms, as in the reference ``kws_util.py``. Every convolution (the depthwise ones too)
    has a bias. The pool size is ``(H // 2, W // 2)`` = (24, 5), as in the reference, which on the
    25x5 feature map gives one output position (the last row is left out of the average). 24,908
    parameters (23,756 trainable), equal to the reference's ``trained_models/kws_ref_model``
    checkpoint.

    Example:
        >>> model = ds_cnn()
        >>> model.count_params()
        24908
        >>> model.output_shape
        (None, 12)
    """
    reg = _l2(weight_decay)
    inputs = keras.Input(shape=tuple(input_shape), name="mfcc")
    x = layers.Conv2D(filters, (10, 4), strides=(2, 2), padding="same", kernel_regularizer=reg,
                      name="conv1")(inputs)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.Dropout(0.2, name="conv1_dropout")(x)
    for i in range(1, blocks + 1):
        p = f"ds{i}"
        x = layers.DepthwiseConv2D((3, 3), padding="same", depth_multiplier=1,
                                   depthwise_regularizer=reg, name=f"{p}_dw")(x)
        x = layers.BatchNormalization(name=f"{p}_dw_bn")(x)
        x = layers.Activation("relu", name=f"{p}_dw_relu")(x)
        x = layers.Conv2D(filters, (1, 1), padding="same", kernel_regularizer=reg, name=f"{p}_pw")(x)
        x = layers.BatchNormalization(name=f"{p}_pw_bn")(x)
        x = layers.Activation("relu", name=f"{p}_pw_relu")(x)
    x = layers.Dropout(0.4, name="dropout")(x)
    pool = (max(int(input_shape[0]) // 2, 1), max(int(input_shape[1]) // 2, 1))
    pool = (min(pool[0], int(x.shape[1])), min(pool[1], int(x.shape[2])))
    x = layers.AveragePooling2D(pool_size=pool, name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


# --------------------------------------------------------------------------------- MobileNetV1

# (pointwise filters at alpha = 1, depthwise stride) of MobileNetV1's 13 separable blocks
# (Howard et al. 2017, "MobileNets", Table 1)
_MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def mobilenet_v1(
    input_shape: tuple[int, int, int] = (96, 96, 3),
    classes: int = 2,
    alpha: float = 0.25,
    *,
    weight_decay: float | None = 1e-4,
    name: str = "mobilenet_v1",
) -> keras.Model:
    """MLPerf Tiny visual wake words: MobileNetV1 at width 0.25 on 96x96x3, 2 classes (221,794 parameters).

    Source: mlcommons/tiny v1.0, ``benchmark/training/visual_wake_words/vww_model.py``,
    ``mobilenet_v1()`` (from Silicon Labs' ``platform_ml_models`` EEMBC person detection model);
    Howard et al. 2017, "MobileNets", Table 1, width multiplier 0.25; Banbury et al. 2021, Table 1.

    Structure (``alpha`` = 0.25)::

        conv3x3(8, stride 2) -> BN -> ReLU
        13 x [DepthwiseConv2D(3x3, stride s) -> BN -> ReLU -> conv1x1(f) -> BN -> ReLU]
             with (f, s) = (16,1) (32,2) (32,1) (64,2) (64,1) (128,2) 5x(128,1) (256,2) (256,1)
        AveragePooling2D(3x3, the whole map) -> Flatten -> Dense(classes, softmax)

    As in the reference (and unlike ``keras.applications.MobileNet``): ``same`` padding instead
    of ZeroPadding2D + ``valid``, plain ReLU instead of ReLU6, biases on every convolution,
    ``he_normal`` initialisation, and no Dropout / 1x1-conv classifier. 221,794 parameters
    (216,322 trainable), equal to the reference's ``trained_models/vww_96.h5``.

    Example:
        >>> model = mobilenet_v1()
        >>> model.count_params()
        221794
        >>> model.output_shape
        (None, 2)
    """
    reg = _l2(weight_decay)
    init = "he_normal"
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Conv2D(int(32 * alpha), 3, strides=2, padding="same", kernel_initializer=init,
                      kernel_regularizer=reg, name="conv1")(inputs)
    x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    for i, (width, stride) in enumerate(_MOBILENET_V1_BLOCKS, start=1):
        p = f"block{i}"
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", depthwise_initializer=init,
                                   depthwise_regularizer=reg, name=f"{p}_dw")(x)
        x = layers.BatchNormalization(name=f"{p}_dw_bn")(x)
        x = layers.Activation("relu", name=f"{p}_dw_relu")(x)
        x = layers.Conv2D(int(width * alpha), 1, padding="same", kernel_initializer=init,
                          kernel_regularizer=reg, name=f"{p}_pw")(x)
        x = layers.BatchNormalization(name=f"{p}_pw_bn")(x)
        x = layers.Activation("relu", name=f"{p}_pw_relu")(x)
    x = layers.AveragePooling2D(pool_size=(int(x.shape[1]), int(x.shape[2])), name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


# ----------------------------------------------------------------------------- FC autoencoder


def fc_autoencoder(
    input_dim: int = 640,
    *,
    units: int = 128,
    bottleneck: int = 8,
    depth: int = 4,
    name: str = "fc_autoencoder",
) -> keras.Model:
    """MLPerf Tiny anomaly detection: the fully connected autoencoder on 640 features (269,992 parameters).

    Source: mlcommons/tiny v1.0, ``benchmark/training/anomaly_detection/keras_model.py``,
    ``get_model(640)`` (the DCASE 2020 Task 2 baseline of Hitachi, Ltd.; the input is 5 frames of
    128 log-mel bins, ``baseline.yaml``); Banbury et al. 2021, Table 1.

    Structure: 4 x [Dense(128) -> BN -> ReLU], Dense(8) -> BN -> ReLU, 4 x [Dense(128) -> BN ->
    ReLU], Dense(640) (linear: the reconstruction, trained with the mean squared error). 269,992
    parameters (267,928 trainable), equal to the reference's ``trained_models/ad01.h5``.

    Example:
        >>> model = fc_autoencoder()
        >>> model.count_params()
        269992
        >>> model.output_shape
        (None, 640)
    """
    inputs = keras.Input(shape=(int(input_dim),), name="features")
    x = inputs
    widths = [("encoder", i, units) for i in range(1, depth + 1)] + [("bottleneck", 0, bottleneck)]
    widths += [("decoder", i, units) for i in range(1, depth + 1)]
    for part, i, width in widths:
        p = part if part == "bottleneck" else f"{part}{i}"
        x = layers.Dense(width, name=f"{p}_dense")(x)
        x = layers.BatchNormalization(name=f"{p}_bn")(x)
        x = layers.Activation("relu", name=f"{p}_relu")(x)
    outputs = layers.Dense(int(input_dim), name="reconstruction")(x)
    return keras.Model(inputs, outputs, name=name)


# ------------------------------------------------------------------------ keras.applications

# keras.applications constructor and its keyword arguments here. Every one accepts inputs from
# 32x32 up with weights=None (smaller ones raise "Input size must be at least 32x32"), NASNetMobile
# included (its imagenet weights alone need 224x224).
APPLICATIONS: dict[str, tuple[str, dict]] = {
    "mobilenet_v2": ("MobileNetV2", {"alpha": 0.35}),
    "mobilenet_v3_small": ("MobileNetV3Small", {}),
    "mobilenet_v3_large": ("MobileNetV3Large", {}),
    "efficientnet_b0": ("EfficientNetB0", {}),
    "efficientnet_v2_b0": ("EfficientNetV2B0", {}),
    "resnet50_v2": ("ResNet50V2", {}),
    "densenet121": ("DenseNet121", {}),
    "nasnet_mobile": ("NASNetMobile", {}),
}
_MIN_SIZE = 32


def _application_key(name: str) -> str:
    key = name.lower().replace("-", "_")
    for short, (cls, _) in APPLICATIONS.items():
        if key in (short, short.replace("_", ""), cls.lower()):
            return short
    raise ValueError(f"unknown application {name!r}: use one of {sorted(APPLICATIONS)} "
                     f"(or {sorted(cls for cls, _ in APPLICATIONS.values())})")


def applications(
    name: str,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    classes: int = 10,
    **kwargs,
) -> keras.Model:
    """A randomly initialised ``keras.applications`` network (``weights=None``, nothing downloaded).

    Args:
        name: ``"mobilenet_v2"`` (MobileNetV2, alpha 0.35), ``"mobilenet_v3_small"``,
            ``"mobilenet_v3_large"``, ``"efficientnet_b0"``, ``"efficientnet_v2_b0"``,
            ``"resnet50_v2"``, ``"densenet121"`` or ``"nasnet_mobile"``; the Keras class name
            (``"MobileNetV2"``) works too.
        input_shape: (height, width, channels); at least 32x32, the smallest Keras accepts for
            each of them (with ``weights=None``; NASNetMobile too).
        classes: size of the softmax head (``include_top=True``, Keras' default softmax).
        **kwargs: passed to the constructor (e.g. ``alpha``, ``include_preprocessing``,
            ``classifier_activation``), overriding the defaults above.

    Keras' defaults are kept otherwise: the MobileNetV3 and EfficientNet models begin with their
    preprocessing layers (Rescaling, and Normalization for EfficientNetB0).

    Example:
        >>> model = applications("mobilenet_v2", (32, 32, 3), classes=10)
        >>> model.output_shape
        (None, 10)
        >>> model.count_params()
        423018
    """
    key = _application_key(name)
    cls, defaults = APPLICATIONS[key]
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape[:2]) < _MIN_SIZE:
        raise ValueError(f"{cls} needs an input of at least {_MIN_SIZE}x{_MIN_SIZE}x3, got {shape}")
    options = {**defaults, **kwargs}
    options.setdefault("weights", None)
    return getattr(keras.applications, cls)(input_shape=shape, classes=classes, **options)


# name -> builder; each builds its network with no arguments (the default input size)
ZOO: dict[str, Callable[..., keras.Model]] = {
    "resnet8": resnet8,
    "ds_cnn": ds_cnn,
    "mobilenet_v1": mobilenet_v1,
    "fc_autoencoder": fc_autoencoder,
    **{key: partial(applications, key) for key in APPLICATIONS},
}

"""Every tfcompress layer through one harness (tests/layer_harness.py): config, build,
behaviour of the layer rebuilt from its config, a training step, ``.keras`` round trip (also in
a fresh process that imports only ``tfcompress``). A new layer class needs a case in ``CASES``;
the harness itself is tested at the end on toy layers whose configs are broken."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import pytest
from layer_harness import (
    assert_keras_roundtrip,
    assert_reload_in_fresh_process,
    layer_model,
    run_layer_test,
)

import tfcompress.layers as layers
from tfcompress import quantizers
from tfcompress.pruning import ConstantSparsity, update_masks


@dataclass
class Case:
    cls: type
    factory: Any  # the class, or a callable making the layer from init_kwargs
    init_kwargs: dict
    input_shape: tuple
    expected_output_shape: tuple | None = None
    trainable: int | None = None
    non_trainable: int | None = None
    options: dict = field(default_factory=dict)
    id: str = ""


def case(cls, init_kwargs, input_shape, *, factory=None, output=None, trainable=None,
         non_trainable=None, id="", **options):
    return Case(cls, factory or cls, init_kwargs, input_shape, output, trainable, non_trainable,
                options, f"{cls.__name__}-{id}" if id else cls.__name__)


def cluster_dense(**kwargs):
    return layers.ClusterWeights(keras.layers.Dense(5, activation="relu"), **kwargs)


def cluster_conv(**kwargs):
    return layers.ClusterWeights(keras.layers.Conv2D(3, 3, padding="same"), **kwargs)


def masked_bn(**kwargs):
    return layers.MaskedBatchNormalization(
        keras.layers.BatchNormalization(momentum=0.5, epsilon=1e-2), **kwargs)


def prune_dense(**kwargs):
    return layers.PruneLowMagnitude(keras.layers.Dense(4, activation="relu"), **kwargs)


def prune_conv(**kwargs):
    return layers.PruneLowMagnitude(keras.layers.Conv2D(4, 3), **kwargs)


def quantized_dense_bn(**kwargs):
    return layers.QuantizedLayer(keras.layers.Dense(4), keras.layers.BatchNormalization(momentum=0.5),
                                 **kwargs)


def quantized_conv(**kwargs):
    return layers.QuantizedLayer(keras.layers.Conv2D(3, 3, strides=2), **kwargs)


def set_mask(values, attribute="mask"):
    def prepare(layer):
        getattr(layer, attribute).assign(np.asarray(values, "float32"))

    return prepare


def spread(shape, low, high, seed=5):
    """Evenly spread values in [low, high], shuffled (deterministic)."""
    values = np.linspace(low, high, int(np.prod(shape)), dtype="float32")
    return np.random.default_rng(seed).permutation(values).reshape(shape)


def spread_kernel(layer):
    # |w| up to 2: a clip_value of 1 or 2 gives different straight-through gradients, and each
    # channel has weights near any ternary threshold
    layer.kernel.assign(spread(tuple(layer.kernel.shape), -2.0, 2.0))


# channels whose L1 and L2 norms rank differently: L1 prunes 1 and 0 first, L2 prunes 0 and 2
CRITERION_KERNEL = np.zeros((6, 4), "float32")
CRITERION_KERNEL[:, 0], CRITERION_KERNEL[0, 1], CRITERION_KERNEL[:, 2], CRITERION_KERNEL[0, 3] = \
    0.5, 2.5, 1.0, 3.2


def update_pruning_masks(layer):
    """Masks from `tfcompress.pruning.update_masks` at sparsity 0.5, which reads granularity,
    scope, criterion and min_keep_fraction: on a throwaway model where a second wrapper with the
    same settings and small weights follows the layer (so a global ranking and its floor differ
    from per-layer ones), then a plain layer (channel pruning leaves the output layer alone)."""
    inner = layer.layer
    if isinstance(inner, keras.layers.Dense):
        inner.kernel.assign(CRITERION_KERNEL)
        inputs, follower, last = keras.Input((6,)), keras.layers.Dense(3), keras.layers.Dense(2)
    else:
        inputs = keras.Input((None, None, inner.kernel.shape[-2]))
        follower, last = keras.layers.Conv2D(4, 1), keras.layers.Conv2D(2, 1)
    follower = layers.PruneLowMagnitude(
        follower, layer.pruning_schedule, granularity=layer.granularity, scope=layer.scope,
        criterion=layer.criterion, min_keep_fraction=layer.min_keep_fraction)
    model = keras.Model(inputs, last(follower(layer(inputs))))
    follower.layer.kernel.assign(spread(tuple(follower.layer.kernel.shape), -0.1, 0.1))
    update_masks(model, step=0, force_sparsity=0.5)
    bias = inner.bias
    bias.assign(spread(tuple(bias.shape), 0.1, 1.0))  # a masked channel's bias shows too


def recluster(layer):
    # a skewed kernel with zeros, clustered again: init and preserve_sparsity matter
    kernel = spread(tuple(layer.layer.kernel.shape), 0.0, 1.0) ** 3
    kernel[kernel < 0.01] = 0.0
    layer.layer.kernel.assign(kernel)
    layer.initialize_clusters()


def sbp_state(layer):
    layer.mu.assign([-0.5, -3.0, -0.1, -0.2, -1.0])
    layer.log_sigma.assign(np.log([0.1, 3.0, 0.3, 0.2, 0.5]))


def dirichlet_state(layer):
    layer.log_concentration.assign(np.log([0.1, 3.0, 1.0, 9.0, 0.5, 4.0]))  # channel 4: D E[s] = 0.17
    layer.mask.assign([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])


def bc_state(layer):
    # group log alphas 2.25, 5.8 and 2.75: thresholds of 2, 2.5, 3 each prune other groups
    log_alpha = np.asarray([2.25, 5.8, 2.75], "float32")
    layer.z_log_sigma2.assign(np.full(3, -8.0, "float32"))
    layer.z_mu.assign(np.exp(-(log_alpha + 8.0) / 2))
    layer.kl_weight.assign(0.25)


def vd_state(layer):
    # every unit's log alphas spread evenly over [0.1, 4.9] (thresholds in it split them)
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    columns = kernel.reshape(-1, kernel.shape[-1])
    rng = np.random.default_rng(1)
    log_alpha = np.stack([rng.permutation(np.linspace(0.1, 4.9, columns.shape[0]))
                          for _ in range(columns.shape[1])], axis=1).reshape(kernel.shape)
    layer.log_sigma2.assign((np.log(kernel**2 + 1e-8) + log_alpha).astype("float32"))
    mask = np.ones(tuple(layer.mask.shape), "float32")
    mask[-1] = 0.0
    layer.mask.assign(mask)


def vbn_state(layer):
    layer.mask.assign([1.0, 0.0, 1.0])
    layer.kl_weight.assign(0.25)


def after_activation_quantizer(layer, inputs):
    # as `tfcompress.quantize` builds it: the input comes from a quantizer
    return layer(layers.ActivationQuantizer(name="input_quantizer")(inputs))


def add_flatten_dense(layer, inputs):
    return keras.layers.Dense(2)(keras.layers.Flatten()(layer(inputs)))


CASES = [
    case(layers.ActivationQuantizer, {"ema_decay": 0.5, "start_step": 1}, (4, 6),
         output=(4, 6), trainable=0, non_trainable=3, id="ema"),
    case(layers.ActivationQuantizer, {"fixed_range": (0.0, 255 / 256), "start_step": 1}, (4, 6),
         output=(4, 6), trainable=0, non_trainable=3, id="fixed_range"),
    case(layers.SharedRangeQuantizer, {"members": 3, "ema_decay": 0.5, "start_step": 1}, (4, 6),
         output=(4, 6), trainable=0, non_trainable=3, call_kwargs={"member": 1}),
    case(layers.QuantizeActivation, {"quantizer": quantizers.SteSign(0.8)}, (4, 6),
         output=(4, 6), trainable=0, non_trainable=0),
    case(layers.BinaryDense, {"units": 4, "kernel_quantizer": "ste_sign", "input_quantizer": "ste_sign"},
         (4, 6), output=(4, 4), trainable=2, non_trainable=0, id="ste", prepare=spread_kernel),
    case(layers.BinaryDense, {"units": 4, "activation": "relu", "use_bias": False,
                              "kernel_quantizer": quantizers.MagnitudeAwareSign(clip_value=None)},
         (4, 6), output=(4, 4), trainable=1, non_trainable=0, id="magnitude_aware",
         prepare=spread_kernel),
    case(layers.BinaryConv2D, {"filters": 4, "kernel_size": 3, "padding": "same",
                               "kernel_quantizer": quantizers.XnorWeight(2.0)},
         (2, 7, 7, 2), output=(2, 7, 7, 4), trainable=2, non_trainable=0, prepare=spread_kernel),
    case(layers.TernaryDense, {"units": 4, "threshold_factor": 0.5,
                               "input_quantizer": quantizers.SteSign(0.8)},
         (4, 12), output=(4, 4), trainable=2, non_trainable=0, prepare=spread_kernel),
    case(layers.TernaryConv2D, {"filters": 4, "kernel_size": 3, "threshold_factor": 0.9, "strides": 2},
         (2, 7, 7, 2), output=(2, 3, 3, 4), trainable=2, non_trainable=0, prepare=spread_kernel),
    case(layers.HashedDense, {"units": 5, "compression": 0.25, "seed": 7, "activation": "relu"},
         (4, 12), output=(4, 5), trainable=2, non_trainable=0),
    case(layers.HashedConv2D, {"filters": 4, "kernel_size": 3, "compression": 0.5, "seed": 3,
                               "padding": "same"},
         (2, 6, 6, 3), output=(2, 6, 6, 4), trainable=2, non_trainable=0),
    case(layers.BCDense, {"units": 3, "dataset_size": 16, "activation": "relu", "threshold": 2.5,
                          "initial_log_sigma2": -8.0, "kl_weight": 0.5, "seed": 2},
         (4, 6), output=(4, 3), trainable=5, non_trainable=2, prepare=bc_state),
    case(layers.BCConv2D, {"filters": 3, "kernel_size": 3, "strides": 2, "padding": "same",
                           "dataset_size": 16, "activation": "relu", "use_bias": False,
                           "threshold": 2.6, "seed": 1},
         (2, 6, 6, 2), output=(2, 3, 3, 3), trainable=4, non_trainable=2, prepare=bc_state),
    case(layers.VariationalDense, {"units": 3, "dataset_size": 16, "activation": "relu",
                                   "kernel_initializer": "he_normal", "bias_initializer": "ones",
                                   "initial_log_sigma2": -6.0, "threshold": 2.5, "kl_weight": 0.5,
                                   "seed": 1},
         (4, 12), output=(4, 3), trainable=3, non_trainable=2, prepare=vd_state),
    case(layers.VariationalConv2D, {"filters": 3, "kernel_size": 3, "padding": "same",
                                    "dilation_rate": 2, "dataset_size": 16, "activation": "relu",
                                    "threshold": 2.0, "seed": 1},
         (2, 7, 7, 2), output=(2, 7, 7, 3), trainable=3, non_trainable=2, prepare=vd_state),
    case(layers.VariationalConv2D, {"filters": 3, "kernel_size": (3, 2), "strides": 2,
                                    "dataset_size": 16, "use_bias": False, "seed": 4},
         (2, 7, 7, 2), output=(2, 3, 3, 3), trainable=2, non_trainable=2, id="strided"),
    case(layers.VariationalBatchNormalization, {"dataset_size": 64, "prior_stddev": 0.3,
                                                "initial_stddev": 0.05, "kl_weight": 0.5, "seed": 2,
                                                "momentum": 0.5, "epsilon": 1e-2},
         (4, 5, 5, 3), output=(4, 5, 5, 3), trainable=3, non_trainable=4, prepare=vbn_state),
    case(layers.DirichletSwitch, {"dataset_size": 32, "prior_concentration": 0.3,
                                  "initial_concentration": 5.0, "importance_threshold": 0.2,
                                  "kl_weight": 0.5, "seed": 3},
         (4, 6), output=(4, 6), trainable=1, non_trainable=2, prepare=dirichlet_state,
         id="reparameterized"),
    case(layers.DirichletSwitch, {"dataset_size": 32, "estimator": "mean", "scale_by_channels": False},
         (4, 3, 3, 6), output=(4, 3, 3, 6), trainable=1, non_trainable=2, prepare=dirichlet_state,
         id="mean"),
    case(layers.LogNormalDropout, {"dataset_size": 20, "log_lower": -10.0, "log_upper": 0.5,
                                   "snr_threshold": 2.0, "initial_mu": -0.5,
                                   "initial_log_sigma": -2.0, "kl_weight": 0.5, "seed": 1},
         (4, 5), output=(4, 5), trainable=2, non_trainable=2, id="state", prepare=sbp_state),
    case(layers.LogNormalDropout, {"dataset_size": 20, "initial_mu": -0.5, "initial_log_sigma": -1.0},
         (4, 3, 3, 5), output=(4, 3, 3, 5), trainable=2, non_trainable=2, id="defaults"),
    case(layers.ClusterWeights, {"n_clusters": 4, "init": "density", "preserve_sparsity": False},
         (4, 6), factory=cluster_dense, output=(4, 5), trainable=2, non_trainable=3, id="dense",
         prepare=recluster),
    case(layers.ClusterWeights, {"n_clusters": 5, "init": "kmeans++"},
         (2, 5, 5, 2), factory=cluster_conv, output=(2, 5, 5, 3), trainable=2, non_trainable=3,
         id="conv", prepare=recluster),
    case(layers.MaskedBatchNormalization, {"source": "conv"}, (4, 3),
         factory=masked_bn, output=(4, 3), trainable=2, non_trainable=3,
         prepare=set_mask([1.0, 0.0, 1.0], "channel_mask")),
    case(layers.PruneLowMagnitude, {"pruning_schedule": ConstantSparsity(0.5, 0, end_step=10, frequency=2),
                                    "granularity": "channel", "criterion": "l1"},
         (4, 6), factory=prune_dense, output=(4, 4), trainable=2, non_trainable=2,
         prepare=update_pruning_masks, id="channel"),
    case(layers.PruneLowMagnitude, {"pruning_schedule": ConstantSparsity(0.5, 0), "scope": "global",
                                    "min_keep_fraction": 0.4},
         (4, 6), factory=prune_dense, output=(4, 4), trainable=2, non_trainable=2,
         prepare=update_pruning_masks, id="global"),
    case(layers.PruneLowMagnitude, {"pruning_schedule": ConstantSparsity(0.5, 3), "granularity": "2:4"},
         (2, 6, 6, 4), factory=prune_conv, output=(2, 4, 4, 4), trainable=2, non_trainable=2,
         prepare=update_pruning_masks, id="n_m"),
    case(layers.QuantizedLayer, {"activation": "relu6", "preserve_sparsity": True, "ema_decay": 0.5,
                                 "start_step": 1},
         (4, 6), factory=quantized_dense_bn, output=(4, 4), trainable=4, non_trainable=7,
         id="dense_bn"),
    case(layers.QuantizedLayer, {"activation": "relu", "quantize_output": False}, (2, 7, 7, 2),
         factory=quantized_conv, output=(2, 3, 3, 3), trainable=2, non_trainable=1, id="conv",
         wrap_model=add_flatten_dense),
    case(layers.QuantizedLayer, {"activation": "relu", "ema_decay": 0.5}, (2, 7, 7, 2),
         factory=quantized_conv, output=(2, 3, 3, 3), trainable=2, non_trainable=4,
         id="after_quantizer", wrap_model=after_activation_quantizer),
]


def layer_classes() -> set[type]:
    """Every public Layer class of tfcompress.layers: ``__all__`` and its submodules."""
    found = {obj for name in layers.__all__ if inspect.isclass(obj := getattr(layers, name))}
    for info in pkgutil.iter_modules(layers.__path__):
        module = importlib.import_module(f"{layers.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, keras.layers.Layer) and not name.startswith("_") \
                    and obj.__module__ == module.__name__:
                found.add(obj)
    return found


def test_every_layer_class_has_a_harness_case():
    covered = {c.cls for c in CASES}
    missing = sorted(cls.__name__ for cls in layer_classes() - covered)
    assert not missing, f"add a CASES entry to tests/test_layers.py for {missing}"
    assert len(layer_classes()) >= 20


@pytest.mark.parametrize("cls", sorted(layer_classes(), key=lambda c: c.__name__),
                         ids=lambda c: c.__name__)
def test_every_layer_class_is_registered(cls):
    name = keras.saving.get_registered_name(cls)
    assert name.startswith("tfcompress>"), name
    assert keras.saving.get_registered_object(name) is cls


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_layer(c, tmp_path):
    result = run_layer_test(
        c.factory, c.init_kwargs, c.input_shape, expected_output_shape=c.expected_output_shape,
        expected_num_trainable_weights=c.trainable, expected_num_non_trainable_weights=c.non_trainable,
        tmp_path=tmp_path, **c.options,
    )
    assert type(result.layer) is c.cls


def test_every_case_reloads_in_a_fresh_process_after_import_tfcompress(tmp_path):
    """The registrations ``import tfcompress`` makes are enough to load every layer (in-process
    tests cannot tell: the test modules have imported more)."""
    models = {}
    for c in CASES:
        keras.utils.set_random_seed(0)
        layer = c.factory(**c.init_kwargs)
        model = layer_model(layer, c.input_shape[1:], call_kwargs=c.options.get("call_kwargs"),
                            wrap_model=c.options.get("wrap_model"))
        if c.options.get("prepare"):
            c.options["prepare"](layer)
        x = np.random.default_rng(0).normal(size=c.input_shape).astype("float32")
        models[c.id] = (model, x)
    assert_reload_in_fresh_process(models, tmp_path)


# ---------------------------------------------------------------- the harness itself


class ScaledDense(keras.layers.Dense):
    """Dense times ``scale``: a correct layer, the control case."""

    def __init__(self, units, scale: float = 1.0, **kwargs):
        super().__init__(units, **kwargs)
        self.scale = float(scale)

    def call(self, inputs, training=None):
        return super().call(inputs) * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


class DroppedScaleDense(ScaledDense):
    """Broken: ``get_config`` drops ``scale``, so a reloaded layer computes with 1.0."""

    def get_config(self):
        config = super().get_config()
        del config["scale"]
        return config


class StaleScaleDense(ScaledDense):
    """Broken: ``get_config`` has the key ``scale`` but always the default value."""

    def get_config(self):
        return {**super().get_config(), "scale": 1.0}


class ForgetfulDirichlet(layers.DirichletSwitch):
    """Broken: ``estimator`` is dropped (only training-mode outputs change)."""

    def get_config(self):
        config = super().get_config()
        del config["estimator"]
        return config


def toy_objects(cls):
    return {cls.__name__: cls}


def test_harness_accepts_a_correct_layer(tmp_path):
    result = run_layer_test(ScaledDense, {"units": 3, "scale": 3.0}, (4, 5), expected_output_shape=(4, 3),
                            expected_num_trainable_weights=2, expected_num_non_trainable_weights=0,
                            custom_objects=toy_objects(ScaledDense), tmp_path=tmp_path)
    assert result.loaded_layer.scale == 3.0


def test_harness_fails_on_a_config_that_drops_an_argument(tmp_path):
    with pytest.raises(AssertionError, match="misses the __init__ argument 'scale'"):
        run_layer_test(DroppedScaleDense, {"units": 3, "scale": 3.0}, (4, 5),
                       custom_objects=toy_objects(DroppedScaleDense), tmp_path=tmp_path)


def test_harness_fails_on_a_config_with_a_wrong_value(tmp_path):
    with pytest.raises(AssertionError, match="inference outputs"):
        run_layer_test(StaleScaleDense, {"units": 3, "scale": 3.0}, (4, 5),
                       custom_objects=toy_objects(StaleScaleDense), tmp_path=tmp_path)


def test_harness_fails_on_a_dropped_argument_of_a_subclass(tmp_path):
    # the signature check sees DirichletSwitch's parameters through the subclass's __init__
    with pytest.raises(AssertionError, match="'estimator'"):
        run_layer_test(ForgetfulDirichlet, {"dataset_size": 8, "estimator": "mean"}, (4, 3),
                       custom_objects=toy_objects(ForgetfulDirichlet), tmp_path=tmp_path)


def test_harness_fails_on_a_dropped_argument_of_a_wrapped_layer(tmp_path):
    def factory(units):
        return layers.ClusterWeights(DroppedScaleDense(units, scale=2.0), n_clusters=3)

    with pytest.raises(AssertionError, match="inference outputs"):
        run_layer_test(factory, {"units": 3}, (4, 5), custom_objects=toy_objects(DroppedScaleDense),
                       tmp_path=tmp_path)


def test_assert_keras_roundtrip_fails_on_a_lost_argument(tmp_path):
    inputs = keras.Input((5,))
    model = keras.Model(inputs, DroppedScaleDense(3, scale=3.0)(inputs))
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    with pytest.raises(AssertionError, match="predictions"):
        assert_keras_roundtrip(model, x, tmp_path, custom_objects=toy_objects(DroppedScaleDense))


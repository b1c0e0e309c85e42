"""Data-driven criteria against NumPy / finite-difference references; pruning at initialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.criteria import (
    OBD,
    SNIP,
    APoZ,
    FLOPsTaylor,
    GraSP,
    MeanActivation,
    Taylor,
    prune_at_initialization,
)
from tfcompress.errors import TfcompressError
from tfcompress.pruning import prune, pruning_wrappers, strip, update_masks
from tfcompress.schedules import ConstantSparsity


def model_and_data(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(5, 3, activation="relu", name="conv")(inp)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(7, activation="relu", name="fc")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, 32)
    return model, x, y


def prepared(criterion_cls, **kwargs):
    model, x, y = model_and_data()
    criterion = criterion_cls((x, y), num_batches=1, batch_size=32, **kwargs)
    pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", criterion=criterion,
                   layers={"conv": {}, "fc": {}})
    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrappers = pruning_wrappers(pruned)
    criterion.prepare(pruned, wrappers)
    return model, pruned, criterion, wrappers, x, y


def reference_activations(model, x, y):
    """Layer outputs and dL/d(output) computed on the plain model, per sample (NumPy)."""
    probe = keras.Model(model.inputs, [model.get_layer("conv").output, model.get_layer("fc").output, model.output])
    xs = tf.constant(x)
    with tf.GradientTape() as tape:
        conv, fc, logits = probe(xs)
        losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        total = tf.reduce_sum(losses)  # per-sample gradients of per-sample losses
    g_conv, g_fc = tape.gradient(total, [conv, fc])
    return {"conv": (conv.numpy(), g_conv.numpy()), "fc": (fc.numpy(), g_fc.numpy())}


def test_activation_criteria_match_numpy():
    model, pruned, criterion, wrappers, x, y = prepared(Taylor)
    ref = reference_activations(model, x, y)
    for w in wrappers:
        a, g = ref[w.layer.name]
        a2, g2 = a.reshape(len(a), -1, a.shape[-1]), g.reshape(len(g), -1, g.shape[-1])
        np.testing.assert_allclose(criterion.channel_scores(w), np.abs(a2 * g2).mean(1).mean(0), rtol=1e-4, atol=1e-7)
    for cls, expected in ((MeanActivation, lambda a: a.mean(1).mean(0)),
                          (APoZ, lambda a: 1 - (a == 0).mean(1).mean(0))):
        _, _, criterion, wrappers, _, _ = prepared(cls)
        for w in wrappers:
            a = ref[w.layer.name][0]
            a2 = a.reshape(len(a), -1, a.shape[-1])
            np.testing.assert_allclose(criterion.channel_scores(w), expected(a2), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls", [MeanActivation, APoZ, Taylor])
def test_activation_criteria_on_a_pruned_sequential_equal_the_functional_scores(cls):
    # a Sequential's layer outputs can belong to another build than its inputs: the probe model
    # must still be built (it once hit Keras' duplicate-name check) and measure the same numbers
    functional, x, y = model_and_data()
    layers = [keras.layers.Conv2D(5, 3, activation="relu", name="conv"), keras.layers.Flatten(),
              keras.layers.Dense(7, activation="relu", name="fc"), keras.layers.Dense(3, name="out")]
    sequential = keras.Sequential([keras.Input((6, 6, 2)), *layers])
    sequential.set_weights(functional.get_weights())
    scores = []
    for model in (functional, sequential):
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        criterion = cls((x, y), num_batches=1, batch_size=32)
        pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", criterion=criterion,
                       layers={"conv": {}, "fc": {}}, verbose=0)
        pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        update_masks(pruned, 0)
        scores.append({w.layer.name: criterion.channel_scores(w) for w in pruning_wrappers(pruned)})
    assert isinstance(pruned, keras.Sequential)
    for name in ("conv", "fc"):
        np.testing.assert_allclose(scores[1][name], scores[0][name], rtol=1e-6)


def test_flops_regularized_saliency_subtracts_normalized_flops():
    _, _, taylor, wrappers, _, _ = prepared(Taylor)
    _, _, flops, wrappers2, _, _ = prepared(FLOPsTaylor, flops_weight=0.5)
    macs_per_channel = {"conv": 4 * 4 * 9 * 2, "fc": 80}  # conv: 16 positions x 18 MACs; fc: 80 inputs
    largest = max(macs_per_channel.values())
    for w, w2 in zip(wrappers, wrappers2, strict=True):
        np.testing.assert_allclose(flops.channel_scores(w2),
                                   taylor.channel_scores(w) - 0.5 * macs_per_channel[w.layer.name] / largest,
                                   rtol=1e-5, atol=1e-7)


def weight_gradients(model, x, y):
    kernels = [model.get_layer(n).kernel for n in ("conv", "fc")]
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x))
    return [k.numpy() for k in kernels], [g.numpy() for g in tape.gradient(loss, [k.value for k in kernels])]


def test_obd_and_snip_match_the_plain_model_gradients():
    for cls, formula in ((OBD, lambda g, w: 0.5 * g**2 * w**2), (SNIP, lambda g, w: np.abs(g * w))):
        model, pruned, criterion, wrappers, x, y = prepared(cls)
        ws, gs = weight_gradients(model, x, y)
        for wrapper, w, g in zip(wrappers, ws, gs, strict=True):
            np.testing.assert_allclose(criterion.scores(wrapper), formula(g, w), rtol=1e-4, atol=1e-9)


def test_grasp_hessian_gradient_product_matches_finite_differences():
    model, pruned, criterion, wrappers, x, y = prepared(GraSP)
    ws, gs = weight_gradients(model, x, y)
    # H g by central differences of the gradient along g
    eps = 1e-3
    kernels = [model.get_layer(n).kernel for n in ("conv", "fc")]
    norm = np.sqrt(sum((g**2).sum() for g in gs))
    for k, w, g in zip(kernels, ws, gs, strict=True):
        k.assign(w + eps * g / norm)
    _, g_plus = weight_gradients(model, x, y)
    for k, w, g in zip(kernels, ws, gs, strict=True):
        k.assign(w - eps * g / norm)
    _, g_minus = weight_gradients(model, x, y)
    for wrapper, w, gp, gm in zip(wrappers, ws, g_plus, g_minus, strict=True):
        hg = (gp - gm) / (2 * eps) * norm
        np.testing.assert_allclose(criterion.scores(wrapper), w * hg, rtol=0.05, atol=1e-5)


def test_criterion_drives_update_masks_and_needs_data():
    model, x, y = model_and_data()
    pruned = prune(model, ConstantSparsity(0.4, 0), granularity="channel", criterion=APoZ((x, y), num_batches=1),
                   layers={"conv": {}, "fc": {}})
    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    update_masks(pruned, 0)
    fc = pruned.get_layer("prune_low_magnitude_fc")
    scores = fc.criterion.channel_scores(fc)
    kept = fc.channel_mask_numpy()
    assert kept.sum() == 7 - round(0.4 * 7)
    assert scores[kept == 1].min() >= scores[kept == 0].max()
    with pytest.raises(TfcompressError, match="needs training data"):
        bad = prune(model, ConstantSparsity(0.4, 0), criterion="taylor", layers={"fc": {}})
        bad.compile("sgd", "mse")
        update_masks(bad, 0)


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_prune_at_initialization_sets_fixed_masks(method):
    model, x, y = model_and_data()
    pruned = prune_at_initialization(model, (x, y), 0.7, method)
    masks = [keras.ops.convert_to_numpy(w.mask) for w in pruning_wrappers(pruned)]
    total = sum(m.size for m in masks)
    assert sum(int((m == 0).sum()) for m in masks) == round(0.7 * total)
    update_masks(pruned, 1)  # the schedule has ended: nothing changes
    for w, m in zip(pruning_wrappers(pruned), masks, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w.mask), m)
    assert strip(pruned).count_params() == model.count_params()


def conv_bn_relu(seed=0, dead=2):
    """Conv (linear) -> BN -> ReLU, with channel ``dead`` always 0 after the ReLU (BN beta = -100)
    although the convolution's own output for it is not."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(5, 3, name="conv")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
    gamma, beta, mean, var = model.get_layer("bn").get_weights()
    beta[dead] = -100.0
    model.get_layer("bn").set_weights([gamma, beta, mean, var])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(seed)
    return model, rng.normal(size=(32, 6, 6, 2)).astype("float32"), rng.integers(0, 3, 32)


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_apoz_and_mean_activation_are_measured_after_the_following_relu(granularity):
    model, x, y = conv_bn_relu()
    conv_out, relu_out = keras.Model(model.inputs, [model.get_layer("conv").output,
                                                    model.get_layer("relu").output]).predict(x, verbose=0)
    assert not (conv_out[..., 2] == 0).any()  # on the conv's own output channel 2 looks alive
    a = relu_out.reshape(len(x), -1, 5)
    references = {APoZ: 1 - (a == 0).mean(1).mean(0), MeanActivation: a.mean(1).mean(0)}
    assert references[APoZ][2] == 0 and (references[APoZ][[0, 1, 3, 4]] > 0).all()
    for cls, expected in references.items():
        criterion = cls((x, y), num_batches=1, batch_size=32)
        pruned = prune(model, ConstantSparsity(0.2, 0), granularity=granularity, criterion=criterion,
                       layers={"conv": {}})
        pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        update_masks(pruned, 0)
        w = pruned.get_layer("prune_low_magnitude_conv")
        np.testing.assert_allclose(criterion.channel_scores(w), expected, rtol=1e-5, atol=1e-7)
        if granularity == "channel":  # through the MaskedBatchNormalization: the dead channel goes first
            np.testing.assert_array_equal(w.channel_mask_numpy(), [1, 1, 0, 1, 1])


def test_apoz_without_a_following_activation_is_an_error():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="conv")(inp)  # linear, read by Flatten: no zeros to count
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(keras.layers.Flatten()(h)))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 6, 6, 2)).astype("float32"), rng.integers(0, 3, 8)
    pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel", criterion=APoZ((x, y), num_batches=1),
                   layers={"conv": {}})
    with pytest.raises(TfcompressError, match="conv has a linear activation and no activation layer follows"):
        update_masks(pruned, 0)

"""shrink: exact removal of zero channels across residual adds, concatenation and depthwise convs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfcompress.errors import TfcompressError
from tfcompress.export.convert import to_tflite
from tfcompress.export.runtime import agreement
from tfcompress.metrics import summarize
from tfcompress.pruning import prune, strip, update_masks
from tfcompress.schedules import ConstantSparsity
from tfcompress.surgery import shrink


def zero_channels(layer, channels, kernel_index=0):
    weights = layer.get_weights()
    weights[kernel_index][..., channels] = 0
    if layer.use_bias:
        weights[-1][channels] = 0
    layer.set_weights(weights)


def lenet_like(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(6, 3, activation="relu", name="c1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(10, 3, activation="relu", name="c2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(20, activation="relu", name="fc"),
        keras.layers.Dense(4, name="out"),
    ])


def randomize_bn(model, seed=1):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if i != 3 else
                               rng.uniform(0.5, 2, w.shape).astype("float32")
                               for i, w in enumerate(layer.get_weights())])


def inputs_for(model, n=16, seed=0):
    return np.random.default_rng(seed).random((n, *model.input_shape[1:]), dtype=np.float32)


def assert_same(a, b, x):
    np.testing.assert_allclose(a.predict(x, verbose=0), b.predict(x, verbose=0), atol=1e-5)


def test_sequential_lenet_with_bn_and_flatten_into_dense():
    model = lenet_like()
    randomize_bn(model)
    zero_channels(model.get_layer("c1"), [0, 4])
    bn = model.get_layer("bn1")
    w = bn.get_weights()
    for i in (0, 1):  # gamma and beta of the pruned channels: BN maps them to exactly 0
        w[i][[0, 4]] = 0
    bn.set_weights(w)
    zero_channels(model.get_layer("c2"), [1, 2, 3, 9])
    zero_channels(model.get_layer("fc"), list(range(0, 20, 2)))
    small, report = shrink(model, return_report=True)
    assert_same(small, model, inputs_for(model))
    assert report.channels == {"c1": (6, 4), "c2": (10, 6), "fc": (20, 10), "out": (4, 4)}
    # independent parameter count of the shrunk architecture
    # 16x16 -> c1 14x14 -> pool 7x7 -> c2 5x5 -> pool 2x2 -> flatten 2*2*6 = 24 features
    expected = (3 * 3 * 1 * 4 + 4) + 4 * 4 + (3 * 3 * 4 * 6 + 6) + (24 * 10 + 10) + (10 * 4 + 4)
    assert summarize(small).params == report.params_after == expected
    linear = 14 * 14 * 9 * 4 + 5 * 5 * 36 * 6 + 24 * 10 + 10 * 4
    assert summarize(small).linear_macs == linear
    assert report.macs_after < report.macs_before


def test_dead_channel_after_batchnorm_shift_is_folded_into_the_reader():
    model = lenet_like()
    randomize_bn(model)  # beta != 0: a zero conv channel becomes a non-zero constant after BN
    zero_channels(model.get_layer("c1"), [1])
    c2_bias = model.get_layer("c2").get_weights()[1].copy()
    small, report = shrink(model, return_report=True)
    # c2 reads it with padding="valid": the constant folds exactly into c2's bias
    assert report.channels["c1"] == (6, 5)
    assert any("folded" in n and "c2" in n for n in report.notes)
    # independent check of the fold: bias += BN(relu(0)) of channel 1 * sum of c2's kernel slice
    gamma, beta, mean, var = model.get_layer("bn1").get_weights()
    eps = model.get_layer("bn1").epsilon
    constant = gamma[1] * (0.0 - mean[1]) / np.sqrt(var[1] + eps) + beta[1]
    kernel = model.get_layer("c2").get_weights()[0]
    np.testing.assert_allclose(small.get_layer("c2").get_weights()[1],
                               c2_bias + constant * kernel[:, :, 1, :].sum(axis=(0, 1)), rtol=1e-5)
    assert_same(small, model, inputs_for(model))


def test_constant_channel_read_with_same_padding_is_kept_and_noted():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(6, 3, activation="relu", name="c1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.Conv2D(5, 3, padding="same", name="c2"),  # zero borders: not a constant
        keras.layers.Flatten(),
        keras.layers.Dense(3, name="out"),
    ])
    randomize_bn(model)
    zero_channels(model.get_layer("c1"), [1])
    small, report = shrink(model, return_report=True)
    assert report.channels["c1"] == (6, 6)
    assert any("padding='same'" in n and "kept" in n for n in report.notes)
    assert_same(small, model, inputs_for(model))


def test_dead_unit_with_nonzero_bias_is_folded_into_the_next_dense():
    model = lenet_like()
    weights = model.get_layer("fc").get_weights()
    weights[0][:, 3] = 0
    weights[1][3] = 0.5  # relu(0.5) = 0.5 reaches "out" as a constant
    model.get_layer("fc").set_weights(weights)
    small, report = shrink(model, return_report=True)
    assert report.channels["fc"] == (20, 19) and any("out" in n and "folded" in n for n in report.notes)
    assert_same(small, model, inputs_for(model))


def residual_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", name="a")(inp)
    a = keras.layers.BatchNormalization(name="bn_a")(a)
    a = keras.layers.ReLU()(a)
    b = keras.layers.Conv2D(8, 1, name="b")(inp)
    s = keras.layers.Add(name="add")([a, b])
    d = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(s)
    c = keras.layers.Conv2D(6, 1, activation="relu", name="c")(d)
    cat = keras.layers.Concatenate(name="cat")([s, c])
    sep = keras.layers.SeparableConv2D(5, 3, activation="relu", name="sep")(cat)
    g = keras.layers.GlobalAveragePooling2D()(sep)
    return keras.Model(inp, keras.layers.Dense(4, name="out")(g))


def test_functional_residual_concat_depthwise_separable():
    model = residual_model()
    randomize_bn(model)
    zero_channels(model.get_layer("a"), [1, 3, 6])
    bn = model.get_layer("bn_a")
    w = bn.get_weights()
    w[0][[1, 3, 6]] = 0
    w[1][[1, 3, 6]] = 0
    bn.set_weights(w)
    zero_channels(model.get_layer("b"), [1, 5, 6])  # add group: only 1 and 6 are dead in both
    zero_channels(model.get_layer("c"), [0, 2])
    zero_channels(model.get_layer("sep"), [4], kernel_index=1)
    small, report = shrink(model, return_report=True)
    assert report.channels["a"] == (8, 6) and report.channels["b"] == (8, 6)
    assert report.channels["c"] == (6, 4) and report.channels["sep"] == (5, 4)
    assert small.get_layer("dw").get_weights()[0].shape[2] == 6
    assert small.get_layer("sep").get_weights()[0].shape[2] == 6 + 4  # concatenation of 6 and 4
    assert_same(small, model, inputs_for(model))


def test_keep_override_and_nothing_to_remove():
    model = residual_model()
    small, report = shrink(model, return_report=True)
    assert report.params_after == report.params_before
    assert_same(small, model, inputs_for(model))
    zero_channels(model.get_layer("c"), [0, 2])
    small, report = shrink(model, keep={"c": np.array([True, True, True, True, True, False])},
                           return_report=True)
    assert report.channels["c"] == (6, 5)  # forced: 5 removed, 0 and 2 kept by the user
    with pytest.raises(TfcompressError, match="entries"):
        shrink(model, keep={"c": np.ones(3, bool)})
    with pytest.raises(TfcompressError, match="unknown layers"):
        shrink(model, keep={"zzz": np.ones(3, bool)})


def test_fully_pruned_layer_is_a_clear_error():
    model = lenet_like()
    dense = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    zero_channels(dense, list(range(dense.units)))  # every unit of the first Dense pruned
    with pytest.raises(TfcompressError, match="no output channel") as info:
        shrink(model)
    assert "prune less" in str(info.value)


def test_untraceable_layer_is_named():
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="conv")(inp)
    h = keras.layers.Reshape((64, 1), name="reshape")(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inp, keras.layers.Dense(2)(h))
    zero_channels(model.get_layer("conv"), [0])
    with pytest.raises(TfcompressError, match="Reshape") as info:
        shrink(model)
    assert "reshape" in str(info.value) and "strict=False" in str(info.value)
    small = shrink(model, strict=False)
    assert small.get_layer("conv").filters == 4
    assert_same(small, model, inputs_for(model))


def test_prune_strip_shrink_export_int8(tmp_path):
    model = lenet_like()
    pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel")
    update_masks(pruned, 0)
    x = inputs_for(model, 64)
    small, report = shrink(pruned, return_report=True)  # wrappers are stripped first
    assert report.channels["c1"] == (6, 3) and report.channels["c2"] == (10, 5) and report.channels["fc"] == (20, 10)
    np.testing.assert_allclose(small.predict(x, verbose=0), strip(pruned).predict(x, verbose=0), atol=1e-5)
    out = tmp_path / "small.tflite"
    export = to_tflite(small, out, "int8", representative_data=x)
    assert export.int8_coverage == 1.0
    assert agreement(small, out, x).top1_agreement >= 0.9


def test_nested_model_is_inlined_and_shrunk():
    keras.utils.set_random_seed(2)
    block = keras.Sequential([keras.Input((8, 8, 4)),
                              keras.layers.Conv2D(6, 3, activation="relu", name="inner"),
                              keras.layers.MaxPooling2D()], name="block")
    inp = keras.Input((10, 10, 2))
    h = keras.layers.Conv2D(4, 3, name="stem")(inp)
    h = block(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
    zero_channels(model.get_layer("stem"), [2])
    zero_channels(block.get_layer("inner"), [0, 5])
    small, report = shrink(model, return_report=True)
    assert report.channels["stem"] == (4, 3) and report.channels["inner"] == (6, 4)
    assert not any(isinstance(layer, keras.Model) for layer in small.layers)
    assert_same(small, model, inputs_for(model))


def test_conv1d_and_separable_conv1d():
    keras.utils.set_random_seed(3)
    inp = keras.Input((20, 3))
    h = keras.layers.Conv1D(8, 3, activation="relu", name="c")(inp)
    h = keras.layers.SeparableConv1D(6, 3, name="sep")(h)
    h = keras.layers.GlobalMaxPooling1D()(h)
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(h))
    zero_channels(model.get_layer("c"), [1, 4, 7])
    zero_channels(model.get_layer("sep"), [0], kernel_index=1)
    small, report = shrink(model, return_report=True)
    assert report.channels["c"] == (8, 5) and report.channels["sep"] == (6, 5)
    assert small.get_layer("sep").get_weights()[0].shape[1] == 5  # depthwise part follows c
    assert_same(small, model, inputs_for(model))


def test_channel_pruned_residual_model_shrinks_to_the_stripped_outputs():
    """prune(granularity="channel") -> update_masks -> shrink on residual Add, Concatenate,
    DepthwiseConv2D and SeparableConv2D: the shrunk model computes what the masked one does."""
    from tfcompress.pruning import pruning_wrappers

    model = residual_model(seed=4)
    randomize_bn(model)
    pruned = prune(model, ConstantSparsity(0.5, 0), granularity="channel")
    update_masks(pruned, 0)
    channel = {w.layer.name: w.channel_mask_numpy() for w in pruning_wrappers(pruned)}
    assert set(channel) == {"a", "b", "dw", "c", "sep"}  # "out" feeds the model output: left alone
    x = inputs_for(model, 32)
    plain = strip(pruned)
    small, report = shrink(pruned, return_report=True)
    np.testing.assert_allclose(small.predict(x, verbose=0), plain.predict(x, verbose=0), atol=1e-5)
    # the Add group keeps a channel if either branch keeps it (removed jointly across the group)
    group = 8 - int(((channel["a"] == 0) & (channel["b"] == 0)).sum())
    assert report.channels["a"] == report.channels["b"] == (8, group) and group < 8
    assert report.channels["c"] == (6, int(channel["c"].sum()))
    assert report.channels["sep"] == (5, int(channel["sep"].sum()))
    assert small.get_layer("dw").get_weights()[0].shape[2] == group  # depthwise follows its input
    assert small.get_layer("sep").get_weights()[0].shape[2] == group + int(channel["c"].sum())  # concatenation
    assert report.params_after < report.params_before and report.macs_after < report.macs_before

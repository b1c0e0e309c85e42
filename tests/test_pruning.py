"""prune / UpdatePruning / strip: masks against NumPy references, export, the user flow."""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pytest
from layer_harness import assert_keras_roundtrip

from tfcompress.callbacks.pruning import UpdatePruning, UpdatePruningStep
from tfcompress.errors import TfcompressError
from tfcompress.export.convert import to_tflite
from tfcompress.export.tflite_file import load_tflite
from tfcompress.metrics import summarize
from tfcompress.pruning import (
    MagnitudeCriterion,
    MaskedBatchNormalization,
    PruneLowMagnitude,
    n_m_mask,
    prune,
    pruning_summary,
    pruning_wrappers,
    strip,
    update_masks,
)
from tfcompress.schedules import ConstantSparsity, PolynomialDecay


def small_cnn(seed=0, bn=True):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((10, 10, 2))
    h = keras.layers.Conv2D(8, 3, name="conv1")(inp)
    if bn:
        h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(12, 3, activation="relu", name="conv2")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="relu", name="fc1")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="out")(h))


def data(n=192, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 10, 10, 2), dtype=np.float32)
    y = (x[:, :5].mean(axis=(1, 2, 3)) > x[:, 5:].mean(axis=(1, 2, 3))).astype("int64") + (x[..., 0].mean((1, 2)) > 0.5)
    return x, y


def fit(model, epochs=2, callbacks=None):
    x, y = data()
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks or [UpdatePruning()])
    return model


def kernel(wrapper):
    return keras.ops.convert_to_numpy(wrapper.kernel_variable)


def test_weight_masks_keep_exactly_the_largest_magnitudes():
    model = prune(small_cnn(), ConstantSparsity(0.7, 0, frequency=1))
    before = {w.name: np.abs(kernel(w)) for w in pruning_wrappers(model)}
    update_masks(model, 0)
    for w in pruning_wrappers(model):
        mask = keras.ops.convert_to_numpy(w.mask)
        scores = before[w.name].reshape(-1)
        n_pruned = int(round(0.7 * scores.size))
        reference = np.ones(scores.size)
        reference[np.argsort(scores, kind="stable")[:n_pruned]] = 0
        np.testing.assert_array_equal(mask.reshape(-1), reference)
        assert np.all(kernel(w)[mask == 0] == 0)  # pruned weights are really zero


def test_channel_masks_whole_channels_bias_and_following_batchnorm():
    model = prune(small_cnn(), ConstantSparsity(0.5, 0, frequency=1), granularity="channel",
                  criterion=MagnitudeCriterion("l1"))
    assert "out" not in {w.layer.name for w in pruning_wrappers(model)}  # model outputs are left alone
    conv1 = model.get_layer("prune_low_magnitude_conv1")
    l1 = np.abs(kernel(conv1)).reshape(-1, 8).sum(axis=0)
    update_masks(model, 0)
    channel_mask = conv1.channel_mask_numpy()
    expected = np.ones(8)
    expected[np.argsort(l1, kind="stable")[:4]] = 0
    np.testing.assert_array_equal(channel_mask, expected)
    bn = model.get_layer("masked_bn1")
    assert isinstance(bn, MaskedBatchNormalization)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.channel_mask), expected)
    x, _ = data(8)
    # the pruned channels are exactly 0 after BN and ReLU
    relu = next(layer for layer in model.layers if isinstance(layer, keras.layers.ReLU))
    probe = keras.Model(model.inputs, relu.output)
    activations = probe.predict(x, verbose=0)
    assert np.all(activations[..., expected == 0] == 0)
    plain = strip(model)
    w = plain.get_layer("bn1").get_weights()
    assert np.all(w[0][expected == 0] == 0) and np.all(w[1][expected == 0] == 0)


def test_n_m_pattern_holds_in_every_group():
    model = prune(small_cnn(bn=False), ConstantSparsity(0.5, 0, frequency=1), granularity="2:4")
    update_masks(model, 0)
    for w in pruning_wrappers(model):
        mask = keras.ops.convert_to_numpy(w.mask)
        axis = 0 if isinstance(w.layer, keras.layers.Dense) else -2
        moved = np.moveaxis(mask, axis, -1)
        full = moved.shape[-1] - moved.shape[-1] % 4
        groups = moved[..., :full].reshape(*moved.shape[:-1], -1, 4)
        assert np.all(groups.sum(axis=-1) == 2), w.name
        # the kept ones are the 2 largest |w| of their group (NumPy reference)
        scores = np.moveaxis(np.abs(kernel(w) + (mask == 0) * 0), axis, -1)[..., :full].reshape(groups.shape)
        kept_min = np.where(groups == 1, scores, np.inf).min(axis=-1)
        pruned_max = np.where(groups == 0, scores, -np.inf).max(axis=-1)
        assert np.all(kept_min >= pruned_max)


def test_n_m_reference_on_a_known_array():
    scores = np.array([[1.0, 4, 2, 3, 9, 8], [0, 0, 5, 1, 1, 7]]).T  # input axis 0, 2 units
    mask = n_m_mask(scores, 2, 4, 0)
    np.testing.assert_array_equal(mask[:, 0], [0, 1, 0, 1, 1, 1])  # tail group of 2 keeps both
    np.testing.assert_array_equal(mask[:, 1], [0, 0, 1, 1, 1, 1])


def test_global_scope_ranks_across_layers_and_respects_the_floor():
    model = prune(small_cnn(bn=False), ConstantSparsity(0.9, 0, frequency=1), scope="global",
                  min_keep_fraction=0.05)
    wrappers = pruning_wrappers(model)
    scores = [np.abs(kernel(w)) for w in wrappers]
    update_masks(model, 0)
    masks = [keras.ops.convert_to_numpy(w.mask) for w in wrappers]
    total = sum(m.size for m in masks)
    assert sum(int((m == 0).sum()) for m in masks) == int(round(0.9 * total))
    floors = [np.ceil(0.05 * m.size) / m.size for m in masks]
    assert all(m.mean() >= f - 1e-9 for m, f in zip(masks, floors, strict=True))  # no layer collapses
    # layers above their floor are cut at one global threshold
    free = [i for i, (m, f) in enumerate(zip(masks, floors, strict=True)) if m.mean() > f + 1e-9]
    assert len(free) > 1
    kept_min = min(scores[i][masks[i] == 1].min() for i in free)
    pruned_max = max(scores[i][masks[i] == 0].max() for i in free)
    assert pruned_max <= kept_min
    # infeasible floors: every layer keeps its floor, no more is pruned
    model = prune(small_cnn(bn=False), ConstantSparsity(0.95, 0, frequency=1), scope="global",
                  min_keep_fraction=0.1)
    update_masks(model, 0)
    for w in pruning_wrappers(model):
        m = keras.ops.convert_to_numpy(w.mask)
        assert (m == 1).sum() == np.ceil(0.1 * m.size)


def test_fit_reaches_the_schedule_and_strip_is_plain_and_equal(tmp_path):
    model = prune(small_cnn(), PolynomialDecay(0.0, 0.8, begin_step=0, end_step=10, frequency=2))
    history = fit(model, epochs=3).history.history
    assert history["sparsity"][-1] == pytest.approx(0.8, abs=0.01)
    x, _ = data(16)
    plain = strip(model)
    assert not any(type(layer).__module__.startswith("tfcompress") for layer in plain.layers)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    summary = summarize(plain)
    assert summary.nonzero_params < summary.params
    # loads without tfcompress-registered classes
    plain.save(tmp_path / "plain.keras")
    assert keras.saving.load_model(tmp_path / "plain.keras", custom_objects={}).count_params() == plain.count_params()
    # metrics see through the wrappers (tfcompress_effective_weights)
    assert summarize(model).nonzero_params == summary.nonzero_params


def test_zeros_survive_int8_export(tmp_path):
    model = prune(small_cnn(bn=False), ConstantSparsity(0.75, 0, frequency=1))
    fit(model, epochs=1)
    plain = strip(model)
    x, _ = data(64)
    to_tflite(plain, tmp_path / "p.tflite", "int8", representative_data=x)
    parsed = load_tflite(tmp_path / "p.tflite")
    int8_zeros = 0
    for t in parsed.tensors[0]:
        values = parsed.constant_values(t)
        if t.constant and values is not None and t.dtype == "INT8" and values.ndim >= 2:
            int8_zeros += int((values == 0).sum())
    keras_zeros = sum(int((w == 0).sum()) for layer in plain.layers for w in layer.get_weights() if w.ndim >= 2)
    assert int8_zeros >= keras_zeros  # every pruned weight is an exact int8 zero (rounding may add a few)
    assert int8_zeros - keras_zeros < 0.01 * keras_zeros


def test_layers_mapping_and_callable_choose_what_is_pruned():
    model = prune(small_cnn(), ConstantSparsity(0.5, 0), layers={"conv2": {}, "fc1": {"granularity": "2:4"}})
    assert {w.layer.name: w.granularity for w in pruning_wrappers(model)} == {"conv2": "weight", "fc1": "2:4"}
    model = prune(small_cnn(), ConstantSparsity(0.5, 0),
                  layers=lambda layer: {} if isinstance(layer, keras.layers.Dense) else None)
    assert {w.layer.name for w in pruning_wrappers(model)} == {"fc1", "out"}
    with pytest.raises(TfcompressError, match="no layer named"):
        prune(small_cnn(), ConstantSparsity(0.5, 0), layers={"nope": {}})
    with pytest.raises(TfcompressError, match="unknown settings"):
        prune(small_cnn(), ConstantSparsity(0.5, 0), layers={"conv2": {"sparsity": 0.3}})


def test_nested_models_are_pruned_inside():
    keras.utils.set_random_seed(1)
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="inner_fc")],
                             name="inner")
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(inner(inp)))
    pruned = prune(model, ConstantSparsity(0.5, 0, frequency=1))
    assert {w.layer.name for w in pruning_wrappers(pruned)} == {"inner_fc", "head"}
    x = np.random.default_rng(0).random((4, 6), dtype=np.float32)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    update_masks(pruned, 0)
    np.testing.assert_allclose(strip(pruned).predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)


def test_subclassed_model_gets_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(TfcompressError, match="subclassed model.*Functional API"):
        prune(net, ConstantSparsity(0.5, 0))


def test_bad_arguments():
    with pytest.raises(TfcompressError, match="granularity"):
        prune(small_cnn(), ConstantSparsity(0.5, 0), granularity="4:2")
    with pytest.raises(TfcompressError, match="scope"):
        prune(small_cnn(), ConstantSparsity(0.5, 0), scope="everything")
    with pytest.raises(TfcompressError, match="criterion"):
        prune(small_cnn(), ConstantSparsity(0.5, 0), criterion="vibes")
    with pytest.raises(TfcompressError, match="no pruned layer"):
        fit(small_cnn(), epochs=1)
    assert UpdatePruningStep is UpdatePruning


def test_serialization_of_the_wrapped_model(tmp_path):
    model = prune(small_cnn(), PolynomialDecay(0.0, 0.6, 0, 8, frequency=2), granularity="channel",
                  criterion="l1")
    fit(model, epochs=1)
    x, _ = data(8)
    again = assert_keras_roundtrip(model, x, tmp_path, atol=1e-6, name="m")
    assert pruning_summary(again) == pruning_summary(model)
    w = again.get_layer("prune_low_magnitude_conv2")
    assert isinstance(w, PruneLowMagnitude) and w.criterion.norm == "l1"
    assert w.pruning_schedule.get_config() == model.get_layer("prune_low_magnitude_conv2").pruning_schedule.get_config()


def test_layers_it_cannot_prune_are_in_its_report_logged_once(caplog, capsys):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 4))
    h = keras.layers.LSTM(5, name="lstm")(inp)
    h = keras.layers.LayerNormalization(name="ln")(h)
    seq = keras.Model(inp, keras.layers.Dense(3, name="head")(h))
    inp = keras.Input((5, 5, 2))
    h = keras.layers.Conv2DTranspose(3, 3, name="deconv")(inp)
    h = keras.layers.Flatten()(h)
    img = keras.Model(inp, keras.layers.Dense(2, name="head2")(h))
    with caplog.at_level(logging.INFO, logger="tfcompress"):
        pruned_seq = prune(seq, ConstantSparsity(0.5, 0))
        pruned_img = prune(img, ConstantSparsity(0.5, 0))
    assert {w.layer.name for w in pruning_wrappers(pruned_seq)} == {"head"}
    assert {w.layer.name for w in pruning_wrappers(pruned_img)} == {"head2"}
    # one record per call, the whole table: a warning, since weight matrices stay dense
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert "lstm" in caplog.records[0].getMessage() and "deconv" in caplog.records[1].getMessage()
    report = pruned_seq.compression_report
    assert [(r.layer, r.action) for r in report.rows] == [("lstm", "skipped"), ("ln", "skipped"), ("head", "pruned")]
    for model, name, kind in ((pruned_seq, "lstm", "LSTM"), (pruned_img, "deconv", "Conv2DTranspose")):
        row = model.compression_report.row(name)
        assert row.type == kind and row.important
        assert f"{kind} layers are not supported" in row.reason and "kernel" in row.reason
        assert "Dense, Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D" in row.fix
    # vector-only weights (normalization) are not a loss of sparsity: listed, not important
    assert "no weight matrix" in report.row("ln").reason and not report.row("ln").important
    data = json.loads(report.to_json())
    assert data["changed"] == 1 and data["skipped"] == 2 and data["rows"][0]["layer"] == "lstm"
    # asking for an unsupported layer explicitly is a warning too; verbose=2 prints, 0 is silent
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfcompress"):
        explicit = prune(seq, ConstantSparsity(0.5, 0), layers={"ln": {}, "head": {}}, verbose=2)
        prune(seq, ConstantSparsity(0.5, 0), verbose=0)
    assert not caplog.records
    printed = capsys.readouterr().out
    assert printed.startswith("prune: 1 layer changed, 2 left alone") and "not selected by layers=" in printed
    assert explicit.compression_report.row("ln").important
    with pytest.raises(TfcompressError, match="verbose"):
        prune(seq, ConstantSparsity(0.5, 0), verbose=3)


def depthwise_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(8, 3, name="conv1")(inp)  # fan-in 18 per channel
    h = keras.layers.DepthwiseConv2D(3, name="dw")(h)  # 9 per channel
    h = keras.layers.Conv2D(12, 1, activation="relu", name="conv2")(h)  # 8 per channel
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(16, activation="relu", name="fc")(h)  # 192 per unit
    return keras.Model(inp, keras.layers.Dense(3, name="out")(h))


def numpy_channel_norms(kernel, depthwise, norm):
    """Per output channel: (norm of its kernel entries, number of entries); NumPy reference."""
    flat = kernel.reshape(-1, kernel.shape[2] * kernel.shape[3]) if depthwise else kernel.reshape(-1, kernel.shape[-1])
    values = np.abs(flat).sum(0) if norm == "l1" else np.sqrt((flat.astype(np.float64) ** 2).sum(0))
    return values, flat.shape[0]


def test_l2_channel_criterion_matches_numpy():
    model = prune(depthwise_cnn(), ConstantSparsity(0.5, 0, frequency=1), granularity="channel", criterion="l2")
    wrappers = pruning_wrappers(model)
    assert {w.layer.name for w in wrappers} == {"conv1", "dw", "conv2", "fc"}
    kernels = {w.layer.name: kernel(w).copy() for w in wrappers}
    update_masks(model, 0)
    norms_of = {name: numpy_channel_norms(k, name == "dw", "l2")[0] for name, k in kernels.items()}
    # conv1 and its depthwise layer share their channels: one score per channel, the mean of the
    # two layers' norms each divided by its layer's mean (issue 24), one choice for both
    coupled = (norms_of["conv1"] / norms_of["conv1"].mean() + norms_of["dw"] / norms_of["dw"].mean()) / 2
    for w in wrappers:
        norms = norms_of[w.layer.name]
        np.testing.assert_allclose(w.criterion.channel_scores(w)[w.channel_mask_numpy() == 1],
                                   norms[w.channel_mask_numpy() == 1], rtol=1e-5)
        ranking = coupled if w.layer.name in ("conv1", "dw") else norms
        expected = np.ones(norms.size)
        expected[np.argsort(ranking, kind="stable")[: round(0.5 * norms.size)]] = 0
        np.testing.assert_array_equal(w.channel_mask_numpy(), expected, err_msg=w.layer.name)
        # whole channels: every kernel entry of a pruned channel is 0, of a kept one is 1
        mask = keras.ops.convert_to_numpy(w.mask)
        flat = mask.reshape(-1, expected.size) if w.layer.name == "dw" else mask.reshape(-1, mask.shape[-1])
        assert np.all(flat == expected[None, :])


def reference_global_channels(units: list[np.ndarray], costs: list[int], sparsity: float,
                              fraction: float) -> list[np.ndarray]:
    """Water-filling over channel groups ("units"): walk the global ranking, each group of units
    keeps at least ceil(fraction * n), a unit costs one channel per member layer, stop once
    round(sparsity * channels) are pruned (Tanaka et al. 2020's floor; issue 24's groups)."""
    sizes = [u.size for u in units]
    caps = [n - max(1, int(np.ceil(fraction * n))) for n in sizes]
    owner = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)])
    order = np.argsort(np.concatenate(units), kind="stable")
    budget = round(sparsity * sum(n * c for n, c in zip(sizes, costs, strict=True)))
    pruned = np.zeros(len(units), int)
    chosen = [[] for _ in units]
    offsets = np.cumsum([0, *sizes])
    for index in order:
        i = owner[index]
        if budget <= 0:
            break
        if pruned[i] >= caps[i] or costs[i] > budget:
            continue
        pruned[i] += 1
        budget -= costs[i]
        chosen[i].append(index - offsets[i])
    masks = []
    for u, picked in zip(units, chosen, strict=True):
        keep = np.ones(u.size)
        keep[picked] = 0
        masks.append(keep)
    return masks


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_global_channel_masks_match_numpy_with_the_floor(norm):
    base = depthwise_cnn(seed=3)
    conv1 = base.get_layer("conv1")
    conv1.set_weights([conv1.get_weights()[0] * 0.02, conv1.get_weights()[1]])  # its channels rank lowest
    model = prune(base, ConstantSparsity(0.5, 0, frequency=1), granularity="channel", scope="global",
                  criterion=MagnitudeCriterion(norm), min_keep_fraction=0.25)
    wrappers = pruning_wrappers(model)
    assert [w.layer.name for w in wrappers] == ["conv1", "dw", "conv2", "fc"]
    scores = []
    for w in wrappers:
        values, group = numpy_channel_norms(kernel(w), w.layer.name == "dw", norm)
        scores.append(values / (group if norm == "l1" else np.sqrt(group)))  # per-weight norm: fan-ins compare
    update_masks(model, 0)
    # conv1 and dw share their channels: one unit per channel, scored by the mean of both, cost 2
    units = [(scores[0] + scores[1]) / 2, scores[2], scores[3]]
    expected = reference_global_channels(units, [2, 1, 1], 0.5, 0.25)
    expected = [expected[0], expected[0], expected[1], expected[2]]
    for w, e in zip(wrappers, expected, strict=True):
        np.testing.assert_array_equal(w.channel_mask_numpy(), e, err_msg=w.layer.name)
    channels = [w.channel_mask_numpy() for w in wrappers]
    assert sum(int((c == 0).sum()) for c in channels) == round(0.5 * sum(c.size for c in channels))
    # conv1 + dw would collapse without the floor: they keep exactly their floor; the groups
    # above their floor (conv2, fc) are cut at one threshold
    assert channels[0].sum() == np.ceil(0.25 * 8)
    np.testing.assert_array_equal(channels[0], channels[1])
    free = [i for i in (2, 3) if channels[i].sum() > np.ceil(0.25 * channels[i].size)]
    assert free
    pruned_free = np.concatenate([units[i - 1][channels[i] == 0] for i in free])
    kept_free = np.concatenate([units[i - 1][channels[i] == 1] for i in free])
    assert pruned_free.size and pruned_free.max() <= kept_free.min()


class _Random(MagnitudeCriterion):
    """Scores that ignore the mask (fresh random numbers each call), so without ``nested`` a
    second update would revive pruned weights."""

    def __init__(self, norm="l2"):
        super().__init__(norm)
        self.rng = np.random.default_rng(0)

    def scores(self, wrapper):
        return self.rng.random(tuple(wrapper.mask.shape))

    def channel_scores(self, wrapper):
        return self.rng.random(wrapper.channel_mask_numpy().size)


@pytest.mark.parametrize("granularity, scope", [("weight", "layer"), ("channel", "global")])
def test_nested_update_keeps_what_is_pruned_pruned(granularity, scope):
    model = prune(small_cnn(bn=False), ConstantSparsity(0.3, 0, frequency=1), granularity=granularity,
                  scope=scope, criterion=_Random())
    update_masks(model, 0)
    first = {w.name: keras.ops.convert_to_numpy(w.mask).copy() for w in pruning_wrappers(model)}
    update_masks(model, 0, force_sparsity=0.6, nested=True)
    now = {w.name: keras.ops.convert_to_numpy(w.mask) for w in pruning_wrappers(model)}
    assert all(np.all(now[name] <= m) for name, m in first.items())
    assert sum(m.sum() for m in now.values()) < sum(m.sum() for m in first.values())
    update_masks(model, 0, force_sparsity=0.6)  # not nested: the random scores revive some
    assert any((keras.ops.convert_to_numpy(w.mask) > first[w.name]).any() for w in pruning_wrappers(model))

"""Budgets (issue 22): `Budget`, `model_cost`, and channel pruning to a budget.

The costs are checked independently: MACs and parameters by hand and against
``tfcompress.metrics.summarize`` of the shrunk model, weight bytes against the constant bytes
of a real int8 ``.tflite`` file, the arena against ``to_micro``.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfcompress
from tfcompress import Budget, model_cost
from tfcompress.errors import TfcompressError
from tfcompress.metrics import summarize
from tfcompress.pruning import (
    BudgetSchedule,
    ConstantSparsity,
    prune,
    pruning_wrappers,
    strip,
    update_masks,
)
from tfcompress.pruning.budget import ChannelCostModel, budget_channel_masks
from tfcompress.zoo import applications, resnet8


def small_cnn(seed: int = 0) -> keras.Model:
    """Conv + BN, a depthwise layer tied to a 1x1 conv by a residual add, pooling, Flatten + Dense."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(x)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(h))
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.Add()([h, keras.layers.Conv2D(8, 1, name="c2")(h)])
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(12, 3, activation="relu", name="c3")(h)
    h = keras.layers.BatchNormalization(name="bn3")(h)
    h = keras.layers.Dense(20, activation="relu", name="fc1")(keras.layers.Flatten()(h))
    return keras.Model(x, keras.layers.Dense(5, name="out")(h))


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Trained-looking BatchNormalization statistics and biases (the converter drops an all-zero
    FULLY_CONNECTED bias, which a trained model does not have)."""
    rng = np.random.default_rng(seed)
    for layer in tfcompress.core.iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
        elif getattr(layer, "use_bias", False):
            layer.bias.assign(rng.normal(0, 0.1, tuple(layer.bias.shape)).astype("float32"))


def mlp() -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((16,))
    h = keras.layers.Dense(32, activation="relu", name="fc1")(x)
    h = keras.layers.Dense(24, activation="relu", name="fc2")(h)
    return keras.Model(x, keras.layers.Dense(4, name="out")(h))


def compiled_with_data(model, n: int, classes: int):
    """``model`` compiled (Adam, logits) and ``n`` random samples for it."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, *model.inputs[0].shape[1:])).astype("float32")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return x, rng.integers(0, classes, n)


def shrunk_cost(pruned, precision="int8"):
    return model_cost(tfcompress.shrink(strip(pruned)), precision)


# --------------------------------------------------------------------------- Budget, Cost


def test_model_cost_hand_count_and_int8_file(tmp_path):
    model = small_cnn()
    randomize_batchnorm(model)
    cost = model_cost(model)
    # by hand: c1 16*16*8 * 9*3, dw 16*16*8 * 9, c2 16*16*8 * 8, add 16*16*8, bn1 16*16*8,
    # maxpool 8*8*8 * 4, c3 6*6*12 * 9*8, bn3 6*6*12, fc1 432*20, out 20*5
    macs = (256 * 8 * 27 + 256 * 8 * 9 + 256 * 8 * 8 + 256 * 8 + 256 * 8 + 64 * 8 * 4 + 36 * 12 * 72 + 36 * 12
            + 432 * 20 + 20 * 5)
    params = (27 * 8) + 4 * 8 + (9 * 8 + 8) + (8 * 8 + 8) + (72 * 12 + 12) + 4 * 12 + (432 * 20 + 20) + (20 * 5 + 5)
    assert (cost.macs, cost.params) == (macs, params) == (summarize(model).macs, model.count_params())
    # weight bytes against the int8 file: kernels 1 B, an int32 bias per output channel (c1's
    # folded from bn1), bn3 after the ReLU of c3 is not folded (a MUL and an ADD: 2 B a channel)
    hand = (27 * 8 + 4 * 8) + (9 * 8 + 4 * 8) + (64 + 4 * 8) + (72 * 12 + 4 * 12) + 2 * 12 + (432 * 20 + 80) + (100 + 20)
    assert cost.weight_bytes == hand
    from tfcompress.export import load_tflite, to_tflite

    to_tflite(model, tmp_path / "m.tflite", "int8", np.random.default_rng(0).uniform(0, 1, (8, 16, 16, 3)))
    tfl = load_tflite(tmp_path / "m.tflite")
    weights_read_by = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MUL", "ADD"}
    constant = {i for op in tfl.ops if op.name in weights_read_by for i in op.inputs if i >= 0
                and tfl.tensors[0][i].constant}
    assert sum(tfl.tensors[0][i].nbytes for i in constant) == cost.weight_bytes
    # int4: Dense / Conv kernels two per byte, the depthwise kernel stays int8; a per-layer dict
    int4 = model_cost(model, "int4").weight_bytes
    assert int4 == hand - sum(n - (n + 1) // 2 for n in (216, 64, 864, 8640, 100))
    assert model_cost(model, {"fc1": "int4"}).weight_bytes == hand - 8640 // 2


def test_budget_config_check_and_errors():
    budget = Budget(params=1000, macs=5000, precision="int4")
    assert Budget.from_config(budget.get_config()) == budget
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(budget)) == budget
    cost = tfcompress.budget.Cost(params=1200, weight_bytes=600, macs=4000, precision="int4")
    check = budget.check(cost)
    assert check.rows == [("params", 1000, 1200, False), ("macs", 5000, 4000, True)]
    assert not check.met and check.unmet == ["params"] and "OVER" in str(check)
    assert Budget(macs=4000).check(cost).met
    with pytest.raises(TfcompressError, match="no limit"):
        Budget()
    with pytest.raises(TfcompressError, match="not a positive number"):
        Budget(macs=-3)
    with pytest.raises(TfcompressError, match="fraction_of"):
        Budget(params=0.5)
    with pytest.raises(TfcompressError, match="unknown precision"):
        Budget(macs=10, precision="int3")
    with pytest.raises(TfcompressError, match="arena=True"):
        Budget(arena_bytes=4096).check(cost)
    with pytest.raises(TfcompressError, match="precision"):
        Budget(weight_bytes=500).check(cost)  # counted at int4, limited at int8
    model = mlp()
    half = Budget.fraction_of(model, macs=0.5, params=0.25)
    dense = model_cost(model)
    assert (half.macs, half.params) == (dense.macs // 2, dense.params // 4)
    with pytest.raises(TfcompressError, match="fraction"):
        Budget.fraction_of(model, macs=2.0)


def test_arena_and_latency_are_measured():
    from tfcompress.export import to_tflite
    from tfcompress.export.micro import to_micro

    model = mlp()
    cost = model_cost(model, arena=True, latency=True)
    assert cost.arena_bytes > 0 and cost.latency_ms > 0 and len(cost.notes) == 2
    budget = Budget(arena_bytes=cost.arena_bytes, latency_ms=1e3)
    assert budget.needs_export and budget.check(cost).met
    assert not Budget(arena_bytes=cost.arena_bytes - 1).check(cost).met
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # the same number to_micro reports on the export
        samples = np.random.default_rng(0).uniform(0, 1, (16, 16)).astype("float32")
        to_tflite(model, f"{tmp}/m.tflite", "int8", samples)
        assert to_micro(f"{tmp}/m.tflite", f"{tmp}/micro").arena_bytes == cost.arena_bytes


# --------------------------------------------------------------------------- the cost model


@pytest.mark.parametrize("name", ["small_cnn", "resnet8"])
def test_cost_model_equals_the_shrunk_model(name):
    model = small_cnn() if name == "small_cnn" else (keras.utils.set_random_seed(0), resnet8())[1]
    randomize_batchnorm(model)
    pruned = prune(model, ConstantSparsity(0.0, 0), "channel", verbose=0)
    costs = ChannelCostModel(pruned)
    wrappers = pruning_wrappers(pruned)
    rng = np.random.default_rng(1)
    for trial in range(2):
        # random channels masked in every group (a random third), then shrink
        masks = {w.name: (rng.uniform(size=w.channel_mask_numpy().size) > 0.33).astype("float32") for w in wrappers}
        from tfcompress.pruning.groups import _dependency_groups

        members, blocked = _dependency_groups(costs.flow, wrappers)
        kept = np.ones(costs.roots.size, bool)
        for root, refs in members.items():
            if root not in blocked and masks[refs[0][0].name][refs[0][1]] == 0:
                kept[costs.index[root]] = False
        for w in wrappers:
            roots = costs.flow.group_of(w.layer.name)
            mask = np.array([kept[costs.index[int(r)]] for r in roots], "float32")
            mask[[not (int(r) in members and int(r) not in blocked) for r in roots]] = 1.0
            w.mask.assign(tfcompress.pruning.channel_to_kernel(w, mask))
        tfcompress.pruning.magnitude._sync_followers(tfcompress.pruning.masked_batch_norms(pruned),
                                                     tfcompress.pruning.groups.follower_masks(pruned))
        measured = shrunk_cost(pruned)
        assert (costs.total("macs", kept), costs.total("params", kept), costs.total("weight_bytes", kept)) == (
            measured.macs, measured.params, measured.weight_bytes), trial


# --------------------------------------------------------------------------- prune(budget=...)


def _check_no_layer_emptied(pruned):
    for w in pruning_wrappers(pruned):
        assert w.channel_mask_numpy().sum() >= 1, w.name


NETS = {
    "small_cnn": small_cnn,
    "mlp": lambda seed=0: mlp(),
    "resnet8": lambda seed=0: (keras.utils.set_random_seed(seed), resnet8())[1],
    "mobilenet_v2": lambda seed=0: (keras.utils.set_random_seed(seed), applications("mobilenet_v2", (32, 32, 3),
                                                                                    alpha=0.35))[1],
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_prune_to_a_budget_meets_it_after_shrink(name):
    model = NETS[name]()
    randomize_batchnorm(model)
    dense = model_cost(model)
    x = np.random.default_rng(0).uniform(0, 1, (4, *model.inputs[0].shape[1:])).astype("float32")
    fractions = [{"macs": 0.4}, {"macs": 0.6, "params": 0.5}] if name != "mobilenet_v2" else [{"macs": 0.3}]
    for fraction in fractions:
        budget = Budget.fraction_of(dense, **fraction)
        pruned = prune(model, budget=budget, verbose=0)
        _check_no_layer_emptied(pruned)
        small = tfcompress.shrink(strip(pruned))
        cost = model_cost(small)
        check = budget.check(cost)
        assert check.met, (fraction, str(check))
        # it uses the budget: at least 80% of the binding limit is spent (coarse nets: one
        # channel of a 16x16 map is a large step)
        assert max(cost.get(q) / limit for q, limit in budget.limits.items()) > 0.8, str(check)
        if name != "mobilenet_v2":  # the shrunk model computes what the masked one does (MobileNetV2:
            np.testing.assert_allclose(small(x), pruned(x), atol=1e-4, rtol=1e-4)  # test_pruning_groups)
        assert "budget" in " ".join(pruned.compression_report.notes)


@pytest.mark.parametrize("name", ["resnet8", "small_cnn"])
def test_budget_keeps_more_importance_than_uniform_at_the_same_macs(name):
    """Uniform 50% channel pruning (every dependency group loses half) against the budget at the
    MACs uniform reaches: the budget keeps at least as much L1 importance, measured two ways (the
    sum over every pruned layer's kept channels of their mean |w| on the dense weights; the L1
    norm of every kernel weight left in the shrunk model)."""
    model = NETS[name]()
    randomize_batchnorm(model)
    uniform = prune(model, ConstantSparsity(0.5, 0), "channel", criterion="l1", verbose=0)
    update_masks(uniform, 0)
    macs = shrunk_cost(uniform).macs
    budgeted = prune(model, budget=Budget(macs=macs), verbose=0)
    assert shrunk_cost(budgeted).macs <= macs

    def kept_importance(pruned):
        total = 0.0
        for w in pruning_wrappers(pruned):
            kernel = np.abs(keras.ops.convert_to_numpy(model.get_layer(w.layer.name).kernel))
            score = tfcompress.pruning.channel_reduce(w, kernel, np.mean)
            total += float((score * w.channel_mask_numpy()).sum())
        return total

    assert kept_importance(budgeted) >= kept_importance(uniform)

    def kept_l1(pruned):  # every kernel weight left in the shrunk model
        small = tfcompress.shrink(strip(pruned))
        return sum(float(np.abs(keras.ops.convert_to_numpy(layer.kernel)).sum()) for layer in small.layers
                   if hasattr(layer, "kernel"))

    assert kept_l1(budgeted) >= kept_l1(uniform)


def test_gradual_budget_during_fit_and_keras_round_trip(tmp_path):
    model = small_cnn()
    budget = Budget.fraction_of(model, macs=0.35)
    schedule = BudgetSchedule(budget, begin_step=0, end_step=3, frequency=1, power=1)
    pruned = prune(model, budget=schedule, verbose=0)
    dense_macs = model_cost(model).macs
    assert shrunk_cost(pruned).macs == dense_macs  # step 0: nothing yet
    wrapper = pruning_wrappers(pruned)[0]
    assert wrapper.pruning_schedule.start["macs"] == dense_macs
    assert wrapper.pruning_schedule.target(1).macs == int(dense_macs - (dense_macs - budget.macs) / 3)
    x, y = compiled_with_data(pruned, 80, 5)
    seen = []
    watch = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(shrunk_cost(pruned).macs))
    pruned.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[tfcompress.callbacks.UpdatePruning(), watch])
    # after the steps 0, 1, 2, 3, 4: dense, a third, two thirds, the budget (and it stays)
    assert seen[0] == dense_macs and all(a >= b for a, b in zip(seen, seen[1:], strict=False))
    assert dense_macs > seen[1] > seen[2] > budget.macs >= seen[3] == seen[4]
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)
    schedule = pruning_wrappers(loaded)[0].pruning_schedule
    assert isinstance(schedule, BudgetSchedule) and schedule.budget == budget and schedule.start["macs"] == dense_macs
    np.testing.assert_allclose(loaded(x[:2]), pruned(x[:2]), atol=1e-5)


def test_prune_budget_errors():
    model = mlp()
    with pytest.raises(TfcompressError, match="both a schedule and a budget"):
        prune(model, ConstantSparsity(0.5, 0), budget=Budget(macs=100))
    with pytest.raises(TfcompressError, match="channel pruning"):
        prune(model, budget=Budget(macs=100), granularity="weight")
    with pytest.raises(TfcompressError, match="schedule or a budget"):
        prune(model)
    with pytest.raises(TfcompressError, match="aim at"):
        prune(model, budget=Budget(arena_bytes=4096))
    with pytest.raises(TfcompressError, match="cannot be met"):
        prune(model, budget=Budget(macs=10), verbose=0)  # fc1 and fc2 keep one unit each: 16 + 1 + 4 MACs
    with pytest.raises(TfcompressError, match="cannot be met"):  # a gradual budget is checked at prune time
        prune(model, budget=BudgetSchedule(Budget(macs=10), 0, 100), verbose=0)
    with pytest.raises(TfcompressError, match="Budget"):
        prune(model, budget={"macs": 100})
    pruned = prune(model, ConstantSparsity(0.0, 0), "channel", verbose=0)
    masks = budget_channel_masks(pruned, pruning_wrappers(pruned), Budget(macs=21))
    assert {k: int(v.sum()) for k, v in masks.items()} == {"prune_low_magnitude_fc1": 1, "prune_low_magnitude_fc2": 1}


# --------------------------------------------------------------------------- Bayesian budgets


def bayesian_cnn() -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(x)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D()(h))
    h = keras.layers.Dense(16, activation="relu", name="fc1")(h)
    return keras.Model(x, keras.layers.Dense(3, name="out")(h))


@pytest.mark.parametrize("method", ["dirichlet", "sparse_vd"])  # every method: the test below, without fit
def test_posterior_pruning_reaches_a_budget_within_fit_at_default_settings(method):
    from tfcompress import bayesian
    from tfcompress.callbacks import PosteriorPruning

    dense = bayesian_cnn()
    budget = Budget.fraction_of(dense, macs=0.3, params=0.3)
    model = bayesian.convert(dense, method, dataset_size=64, verbose=0)
    x, y = compiled_with_data(model, 64, 3)
    costs = []
    watch = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: costs.append(model_cost(bayesian.strip(model), shrink=True)))
    callback = PosteriorPruning(budget=budget, frequency=3)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[callback, watch])  # 12 steps, ends at 7
    assert callback._schedule.end_step == 7
    # gradual: not there after the first epoch (step 4 of 7), there from the second on
    assert not budget.check(costs[0]).met and budget.check(costs[1]).met and budget.check(costs[2]).met, costs
    assert PosteriorPruning.from_config(callback.get_config()).budget == budget


@pytest.mark.parametrize("method", ["vcp", "dirichlet", "sbp", "sparse_vd", "bc"])
def test_mask_to_budget_is_gradual_for_every_method(method):
    from tfcompress import bayesian

    dense = bayesian_cnn()
    model = bayesian.convert(dense, method, dataset_size=64, verbose=0)
    start, budget = model_cost(dense), Budget.fraction_of(dense, macs=0.2, params=0.3)
    bayesian.mask_to_budget(model, budget, progress=0.5)
    half = model_cost(bayesian.strip(model), shrink=True)
    assert budget.macs < half.macs <= start.macs - 0.5 * (start.macs - budget.macs)
    bayesian.mask_to_budget(model, budget)
    final = model_cost(bayesian.strip(model), shrink=True)
    assert budget.check(final).met and final.macs > budget.macs / 2, final
    assert all(layer.keep_mask().sum() >= 1 for layer in bayesian.scored_layers(model, ["conv1", "fc1"]).values())
    if method != "vcp":
        return
    with pytest.raises(TfcompressError, match="Budget"):
        bayesian.mask_to_budget(model, {"macs": 10})
    with pytest.raises(TfcompressError, match="keep or budget"):
        tfcompress.callbacks.PosteriorPruning()

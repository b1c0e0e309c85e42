"""Bayesian training end to end on a conv layer with informative and noise channels.

- ``bayesian.convert`` + brief training recovers the informative conv channels (``structure``);
- ``MirroredStrategy`` on two logical CPUs: every method with noise trains, stays finite and
  prunes the noise channels; the deterministic Dirichlet run equals the single-device one;
- mid-training resume (``.keras`` save / load and ``BackupAndRestore``) with ``KLAnnealing``
  and ``VariationalPruning`` keeps the KL weight, the masks and the step, and ends exactly
  where the uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tfcompress import bayesian
from tfcompress.callbacks import KLAnnealing, VariationalPruning
from tfcompress.errors import TfcompressError
from tfcompress.surgery import shrink

INFORMATIVE, CHANNELS, SAMPLES = 2, 6, 256
EXPECTED = [True] * INFORMATIVE + [False] * (CHANNELS - INFORMATIVE)
# convert() keyword arguments per method: a larger initial posterior variance than the
# function-preserving default lets a brief run (80 steps) separate the channels.
METHODS = {
    "vcp": {},
    "sbp": {"initial_log_sigma": -1.0},
    "bc": {"initial_log_sigma2": -4.0},
    "sparse_vd": {"initial_log_sigma2": -4.0},
    "dirichlet": {},  # reparameterized samples, switches trained with the network frozen
    "dirichlet_mean": {"estimator": "mean", "prior_concentration": 0.5},  # deterministic
}


def conv_task(seed: int = 0, noise_gammas=None):
    """A 'trained' conv model and its data: 4 classes = 2 bits, bit k shown by input channel k.

    The 3x3 conv maps input channel c to output channel c (ReLU; inputs are positive), the
    head reads the global average of channels 0 and 1 only. Channels 2-5 carry uniform noise.
    With ``noise_gammas``, a BatchNormalization ("conv_bn", identity statistics) follows the
    conv, with scale 1 on the informative channels and these scales on the noise channels.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, SAMPLES)
    bits = np.stack([y // 2, y % 2], axis=1).astype("float32")
    x = rng.uniform(0.0, 1.0, (SAMPLES, 6, 6, CHANNELS)).astype("float32")
    x[..., :INFORMATIVE] = 0.15 + 0.7 * bits[:, None, None, :] + rng.normal(0, 0.15, (SAMPLES, 6, 6, INFORMATIVE))
    keras.utils.set_random_seed(seed)
    with_bn = noise_gammas is not None
    model = keras.Sequential([
        keras.Input((6, 6, CHANNELS)),
        keras.layers.Conv2D(CHANNELS, 3, padding="same", activation=None if with_bn else "relu", name="conv"),
        *([keras.layers.BatchNormalization(name="conv_bn"), keras.layers.ReLU()] if with_bn else []),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, name="out"),
    ])
    if with_bn:
        gamma = np.array([1.0] * INFORMATIVE + list(noise_gammas), "float32")
        bn = model.get_layer("conv_bn")
        bn.set_weights([gamma, np.zeros(CHANNELS), np.zeros(CHANNELS), np.full(CHANNELS, 1.0 - bn.epsilon)])
    kernel = np.zeros((3, 3, CHANNELS, CHANNELS), "float32")
    kernel[1, 1] = np.eye(CHANNELS)
    model.get_layer("conv").set_weights([kernel, np.zeros(CHANNELS, "float32")])
    signs = np.array([[-1, -1, 1, 1], [-1, 1, -1, 1]], "float32")  # class c = (bit 0, bit 1)
    head = np.concatenate([8.0 * signs, np.zeros((CHANNELS - INFORMATIVE, 4), "float32")])
    model.get_layer("out").set_weights([head, -4.0 * signs.sum(axis=0)])
    return model, x, y.astype("int64")


def convert(model, method: str):
    """Convert and compile (call inside a strategy scope to distribute)."""
    kind = "dirichlet" if method.startswith("dirichlet") else method
    converted = bayesian.convert(model, kind, dataset_size=SAMPLES, **METHODS[method])
    converted.compile(keras.optimizers.Adam(0.1 if kind == "dirichlet" else 0.05),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return converted


def callbacks(method: str) -> list:
    return [VariationalPruning(tau=0.1, theta=0.3)] if method == "vcp" else []


def conv_channels(converted):
    """(keep mask, channel importance) of the Bayesian layer on the conv channels."""
    (name, info), = bayesian.structure(converted).items()
    return info["keep_mask"], converted.get_layer(name).channel_importance().tolist()


@pytest.mark.parametrize("method", ["vcp", "sbp"])
def test_convert_keeps_the_informative_conv_channels(method):
    model, x, y = conv_task()
    converted = convert(model, method)
    history = converted.fit(x, y, batch_size=32, epochs=10, shuffle=False, verbose=0, callbacks=callbacks(method))
    keep, importance = conv_channels(converted)
    assert keep == EXPECTED, importance
    assert history.history["accuracy"][-1] > 0.95
    small, report = bayesian_shrink(converted)
    assert report.channels["conv"] == (CHANNELS, INFORMATIVE)
    assert np.mean(small.predict(x, verbose=0).argmax(1) == y) > 0.95


def bayesian_shrink(converted):
    from tfcompress.surgery import shrink

    return shrink(converted, return_report=True)


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_bayes_training import INFORMATIVE, callbacks, conv_channels, conv_task, convert

    def run(strategy, method, epochs=8):
        model, x, y = conv_task()
        with strategy.scope():
            converted = convert(model, method)
        history = converted.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0,
                                callbacks=callbacks(method))
        keep, importance = conv_channels(converted)
        result = {"loss": history.history["loss"], "accuracy": history.history["accuracy"][-1],
                  "keep": keep, "importance": importance}
        if method.startswith("dirichlet"):  # step 3 of the paper: keep the top-ranked channels
            converted.get_layer("conv_switch").prune(num_keep=INFORMATIVE)
            result["pruned"] = conv_channels(converted)[0]
        return converted, result

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": mirrored.num_replicas_in_sync}
    for method in sys.argv[2:]:
        out[method] = run(mirrored, method)[1]
    # deterministic (no noise): the mirrored run must reproduce the single-device run
    single, out["single_device"] = run(tf.distribute.get_strategy(), "dirichlet_mean", epochs=3)
    distributed, out["dirichlet_mean"] = run(mirrored, "dirichlet_mean", epochs=3)
    out["dirichlet_mean_weight_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(
        single.get_weights(), distributed.get_weights()))
    print(json.dumps(out))
""")

NOISY = ["vcp", "sbp", "sparse_vd", "bc", "dirichlet"]


@pytest.fixture(scope="module")
def mirrored_runs():
    """One subprocess (logical devices must be set before TensorFlow starts) for all methods."""
    here = os.path.dirname(__file__)
    done = subprocess.run([sys.executable, "-c", MIRRORED, here, *NOISY], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=here, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    return result


@pytest.mark.parametrize("method", NOISY)
def test_mirrored_strategy_trains_and_prunes_the_noise_channels(mirrored_runs, method):
    run = mirrored_runs[method]
    assert np.all(np.isfinite(run["loss"])) and run["loss"][-1] < run["loss"][0], run["loss"]
    assert run["accuracy"] > 0.95
    if method == "dirichlet":
        # Dirichlet ranks channels (its KL alone does not separate them in a brief run); the
        # paper's step 3 keeps the top-ranked ones: the informative channels
        assert run["pruned"] == EXPECTED, run["importance"]
    else:
        assert run["keep"][:INFORMATIVE] == [True] * INFORMATIVE, run
        assert sum(run["keep"][INFORMATIVE:]) <= 1, run


def test_mirrored_strategy_deterministic_dirichlet_equals_the_single_device_run(mirrored_runs):
    single, mirrored = mirrored_runs["single_device"], mirrored_runs["dirichlet_mean"]
    assert mirrored["keep"] == single["keep"]
    np.testing.assert_allclose(mirrored["importance"], single["importance"], rtol=1e-4)
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-4)
    assert mirrored_runs["dirichlet_mean_weight_diff"] < 1e-4
    assert mirrored["pruned"] == single["pruned"] == EXPECTED, single["importance"]


# -- mid-training resume: VCP with KL annealing and Algorithm 1 pruning

EPOCHS, INTERRUPT_AFTER = 5, 3


def vcp_run():
    # noise channels of different BN scales reach the pruning threshold at different epochs
    model, x, y = conv_task(noise_gammas=[0.3, 0.6, 1.0, 1.5])
    return convert(model, "vcp"), x, y


def vcp_callbacks() -> list:
    # VariationalPruning before checkpointing callbacks, so a checkpoint holds the epoch's pruning
    return [KLAnnealing(warmup_epochs=4), VariationalPruning(tau=0.1, theta=0.3)]


def vcp_state(model) -> dict:
    bn = model.get_layer("conv_bn")
    return {"mask": bn.mask.numpy().tolist(), "kl_weight": float(bn.kl_weight.numpy()),
            "step": int(model.optimizer.iterations.numpy())}


@pytest.fixture(scope="module")
def uninterrupted():
    model, x, y = vcp_run()
    history = model.fit(x, y, batch_size=32, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=vcp_callbacks())
    pruned = history.history["vcp_pruned_channels"]
    # the run is interesting: channels are pruned both before and after the interruption
    assert 0 < pruned[INTERRUPT_AFTER - 1] < pruned[-1] == CHANNELS - INFORMATIVE, pruned
    return model, history.history


def assert_same_end(resumed, uninterrupted):
    model, history = uninterrupted
    assert vcp_state(resumed) == vcp_state(model)
    assert vcp_state(model)["step"] == EPOCHS * SAMPLES // 32
    for a, b in zip(resumed.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_keras_save_and_load_mid_training_resumes_exactly(tmp_path, uninterrupted):
    model, x, y = vcp_run()
    model.fit(x, y, batch_size=32, epochs=INTERRUPT_AFTER, shuffle=False, verbose=0, callbacks=vcp_callbacks())
    mid = vcp_state(model)
    assert 0 < mid["kl_weight"] < 1 and mid["step"] == INTERRUPT_AFTER * SAMPLES // 32
    assert 0 < mid["mask"].count(0.0) < CHANNELS - INFORMATIVE
    model.save(tmp_path / "mid.keras")
    resumed = keras.saving.load_model(tmp_path / "mid.keras")
    assert vcp_state(resumed) == mid
    history = resumed.fit(x, y, batch_size=32, epochs=EPOCHS, initial_epoch=INTERRUPT_AFTER, shuffle=False,
                          verbose=0, callbacks=vcp_callbacks())
    assert history.history["kl_weight"] == uninterrupted[1]["kl_weight"][INTERRUPT_AFTER:]
    assert history.history["vcp_pruned_channels"] == uninterrupted[1]["vcp_pruned_channels"][INTERRUPT_AFTER:]
    assert_same_end(resumed, uninterrupted)


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == INTERRUPT_AFTER - 1:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_exactly(tmp_path, uninterrupted):
    backup = str(tmp_path / "backup")
    model, x, y = vcp_run()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, batch_size=32, epochs=EPOCHS, shuffle=False, verbose=0,
                  callbacks=[*vcp_callbacks(), keras.callbacks.BackupAndRestore(backup), Interrupt()])
    fresh, _, _ = vcp_run()  # a new process would start from scratch like this
    assert vcp_state(fresh)["mask"] == [1.0] * CHANNELS
    history = fresh.fit(x, y, batch_size=32, epochs=EPOCHS, shuffle=False, verbose=0,
                        callbacks=[*vcp_callbacks(), keras.callbacks.BackupAndRestore(backup)])
    assert len(history.history["loss"]) == EPOCHS - INTERRUPT_AFTER
    assert history.history["kl_weight"] == uninterrupted[1]["kl_weight"][INTERRUPT_AFTER:]
    assert_same_end(fresh, uninterrupted)


@pytest.mark.parametrize("method", ["dirichlet_mean", "vcp", "sbp", "bc", "sparse_vd"])
def test_prune_to_keeps_the_most_important_channels_and_shrink_cuts_them(method):
    """``prune_to`` (step 3 of Dirichlet pruning, any method): the k channels of highest
    posterior importance among the surviving ones stay, the model computes the same function
    as the cut model, and shrink removes the rest."""
    model, x, y = conv_task()
    converted = convert(model, method)
    converted.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=callbacks(method))
    keep_before, importance = conv_channels(converted)
    alive = [i for i in range(CHANNELS) if keep_before[i]]
    k = min(3, len(alive) - 1)
    assert k >= 1, keep_before
    expected = sorted(sorted(alive, key=lambda i: -importance[i])[:k])
    (name, _), = bayesian.structure(converted).items()
    masked = bayesian.prune_to(converted, {"conv": k})  # by the producing layer's name
    assert masked == {name: len(alive) - k}
    keep_after, _ = conv_channels(converted)
    assert [i for i in range(CHANNELS) if keep_after[i]] == expected
    small, report = bayesian_shrink(converted)
    # shrink may also drop a kept noise channel the head never reads (its outgoing weights are 0)
    assert report.channels["conv"][0] == CHANNELS and 1 <= report.channels["conv"][1] <= k
    np.testing.assert_allclose(small.predict(x, verbose=0), converted.predict(x, verbose=0), atol=1e-4)
    # pruning to more channels than survive changes nothing
    assert bayesian.prune_to(converted, {name: CHANNELS}) == {name: 0}


def test_prune_to_rejects_unknown_layers_and_bad_counts():
    model, _, _ = conv_task()
    converted = convert(model, "dirichlet_mean")
    with pytest.raises(Exception, match="no Bayesian layer scores the channels of 'nope'"):
        bayesian.prune_to(converted, {"nope": 2})
    for bad in (0, CHANNELS + 1, 2.5, True):
        with pytest.raises(Exception, match="not a channel count"):
            bayesian.prune_to(converted, {"conv": bad})


def lenet_costs(c1: int, c2: int, hidden: int, bn: int = 0):
    """LeNet-5-Caffe counted by hand: (MACs, params) of the model and one channel of each layer
    (conv1 5x5x1 -> 24x24, conv2 5x5xc1 -> 8x8, flatten 4x4xc2, fc1 -> hidden, logits 10;
    ``bn`` parameters per channel of a BatchNormalization after conv1, conv2 and fc1)."""
    macs = 25 * 576 * c1 + 25 * c1 * 64 * c2 + 16 * c2 * hidden + 10 * hidden
    params = (26 + bn) * c1 + (25 * c1 + 1 + bn) * c2 + (16 * c2 + 1 + bn) * hidden + 10 * hidden + 10
    return (macs, params), {
        "conv1": (25 * 576 + 25 * c2 * 64, 26 + bn + 25 * c2),
        "conv2": (25 * c1 * 64 + 16 * hidden, 25 * c1 + 1 + bn + 16 * hidden),
        "fc1": (16 * c2 + 10, 16 * c2 + 1 + bn + 10),
    }


def scales_by_hand(c1: int, c2: int, hidden: int, suffix: str, bn: int = 0, macs_weight=1.0, params_weight=1.0):
    (macs, params), channel = lenet_costs(c1, c2, hidden, bn)
    costs = {name: macs_weight * m / macs + params_weight * p / params for name, (m, p) in channel.items()}
    mean = np.mean(list(costs.values()))
    return {f"{name}{suffix}": cost / mean for name, cost in costs.items()}


def test_cost_scales_match_the_hand_count_of_lenet_costs():
    from tfcompress.metrics import summarize
    from tfcompress.models import lenet5_caffe

    model = lenet5_caffe()
    assert lenet_costs(20, 50, 500)[0] == (summarize(model).linear_macs, summarize(model).params)
    for method, suffix, bn in (("vcp", "_bn", 4), ("dirichlet", "_switch", 0)):
        converted = bayesian.convert(model, method, dataset_size=100)
        for weights in ((1.0, 1.0), (1.0, 0.0), (0.5, 2.0)):
            scales = bayesian.cost_scales(converted, macs_weight=weights[0], params_weight=weights[1])
            assert scales == pytest.approx(scales_by_hand(20, 50, 500, suffix, bn, *weights))
    # the costs follow the masks: cut to 5-15-45, a conv1 channel is cheaper than in the full model
    converted = bayesian.convert(model, "vcp", dataset_size=100)
    bayesian.prune_to(converted, {"conv1": 5, "conv2": 15, "fc1": 45})
    small = summarize(shrink(bayesian.strip(converted)))
    assert lenet_costs(5, 15, 45, bn=4)[0] == (small.linear_macs, small.params)
    assert bayesian.cost_scales(converted) == pytest.approx(scales_by_hand(5, 15, 45, "_bn", bn=4))
    masked = [layer for layer in converted.layers if hasattr(layer, "mask")]
    masks = [layer.mask.numpy().copy() for layer in masked]
    bayesian.cost_scales(converted)
    for before, layer in zip(masks, masked, strict=True):
        np.testing.assert_array_equal(layer.mask.numpy(), before)  # the trial masks are undone
    with pytest.raises(TfcompressError, match="no Bayesian layer"):
        bayesian.cost_scales(model)
    with pytest.raises(TfcompressError, match="non-negative"):
        bayesian.cost_scales(converted, macs_weight=0, params_weight=0)


# -- gradual pruning to a sub-architecture by posterior importance (callbacks.PosteriorPruning)

STEPS_PER_EPOCH = SAMPLES // 32


def cubic_schedule_kept(step: int, total: int, keep: int, begin: int, end: int, frequency: int) -> int:
    """Zhu and Gupta 2017, eq. 1, on channel counts, at the last update step <= ``step``, in NumPy."""
    updates = [t for t in range(begin, min(step, end) + 1) if (t - begin) % frequency == 0 or t == end]
    if not updates:
        return total
    progress = np.clip((updates[-1] - begin) / (end - begin), 0.0, 1.0)
    return total - int(np.round((1.0 - (1.0 - progress) ** 3) * (total - keep)))


def posterior_pruning():
    from tfcompress.callbacks import PosteriorPruning

    # one update per epoch, at its last step; the cut ends after epoch 6 of 8
    return PosteriorPruning({"conv": INFORMATIVE}, begin_step=STEPS_PER_EPOCH, end_step=6 * STEPS_PER_EPOCH,
                            frequency=STEPS_PER_EPOCH)


def test_posterior_pruning_follows_the_cubic_schedule_to_the_informative_channels():
    """Every epoch the conv keeps the count of Zhu and Gupta's schedule (a NumPy reference), the
    pruned channels are the noise ones, and the cut model computes what the masked model does."""
    model, x, y = conv_task()
    converted = convert(model, "sbp")
    history = converted.fit(x, y, batch_size=32, epochs=8, shuffle=False, verbose=0, callbacks=[posterior_pruning()])
    expected = [cubic_schedule_kept(e * STEPS_PER_EPOCH, CHANNELS, INFORMATIVE, STEPS_PER_EPOCH,
                                    6 * STEPS_PER_EPOCH, STEPS_PER_EPOCH) for e in range(1, 9)]
    assert expected == [6, 4, 3, 2, 2, 2, 2, 2]  # gradual: the schedule is not a one-shot cut
    assert history.history["posterior_kept/conv"] == expected
    assert conv_channels(converted)[0] == EXPECTED
    assert history.history["accuracy"][-1] > 0.95
    small, report = bayesian_shrink(converted)
    assert report.channels["conv"] == (CHANNELS, INFORMATIVE)
    np.testing.assert_allclose(small.predict(x, verbose=0), converted.predict(x, verbose=0), atol=1e-4)


def test_posterior_pruning_resumes_mid_schedule(tmp_path):
    """The masks are layer variables and the step is the optimizer's: a .keras file saved after
    epoch 2 reloads with both, and a fresh callback continues the schedule where it stopped."""
    model, x, y = conv_task()
    converted = convert(model, "sbp")
    converted.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[posterior_pruning()])
    masks = conv_channels(converted)[0]
    assert sum(masks) == 4
    converted.save(tmp_path / "mid.keras")
    resumed = keras.saving.load_model(tmp_path / "mid.keras")
    assert conv_channels(resumed)[0] == masks
    assert int(resumed.optimizer.iterations.numpy()) == 2 * STEPS_PER_EPOCH
    history = resumed.fit(x, y, batch_size=32, epochs=8, initial_epoch=2, shuffle=False, verbose=0,
                          callbacks=[posterior_pruning()])
    assert history.history["posterior_kept/conv"] == [3, 2, 2, 2, 2, 2]
    kept = conv_channels(resumed)[0]
    assert all(before or not after for before, after in zip(masks, kept, strict=True))  # masks are permanent


def test_posterior_pruning_config_and_errors():
    from tfcompress.callbacks import PosteriorPruning

    callback = posterior_pruning()
    config = callback.get_config()
    assert PosteriorPruning.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert isinstance(restored, PosteriorPruning) and restored.get_config() == config
    model, x, y = conv_task()
    for keep, match in (({"nope": 2}, "no Bayesian layer scores the channels of 'nope'"),
                        ({"conv": CHANNELS + 1}, "not a channel count")):
        converted = convert(model, "sbp")
        with pytest.raises(TfcompressError, match=match):
            converted.fit(x, y, epochs=1, verbose=0, callbacks=[PosteriorPruning(keep, begin_step=0, end_step=8)])
    with pytest.raises(TfcompressError, match="keep is empty"):
        PosteriorPruning({}, begin_step=0, end_step=8)
    with pytest.raises(TfcompressError, match="end_step"):
        PosteriorPruning({"conv": 2}, begin_step=8, end_step=4)

"""Kill -9 mid-epoch and resume with BackupAndRestore, with every tfcompress callback, in both
callback orders: the resumed run's masks, steps, weights, optimizer state and TensorBoard events
equal an uninterrupted run's (issue 20).

Each killed run is a subprocess that sends itself SIGKILL in the middle of epoch 2 (its last
checkpoint is the end of epoch 1); the resumed run is a new model with new callbacks on the same
backup directory. Two groups cover the callbacks (UpdatePruning and SparseTraining both drive the
pruning step, so they cannot share a model):

- "pruning": UpdatePruning, WeightRewinding, LearningRateRewinding, KLAnnealing (per step),
  VariationalPruning, PosteriorPruning and CompressionSummaries on one pruned model with a
  VariationalBatchNormalization layer (VariationalPruning cuts channels at the end of epochs 0
  and 1, the checkpoint the runs resume from);
- "sparse": SparseTraining (RigL: random batches for the dense gradient) and CompressionSummaries.

Orders: "ours_first" = [*ours, BackupAndRestore], "backup_first" = [BackupAndRestore,
*reversed(ours)] (so the tfcompress callbacks also swap places among themselves), with
CompressionSummaries last among ours in both (it logs what the others did in the same hook).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EPOCHS, BATCH, SAMPLES = 5, 8, 64  # 8 steps per epoch, 40 steps
KILL_AFTER = 13  # batches done when the process kills itself: mid epoch 2, checkpoint at step 8
GROUPS = ("pruning", "sparse")
ORDERS = ("ours_first", "backup_first")

pytestmark = pytest.mark.slow


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, 6)).astype("float32")
    return x, (x[:, 0] + x[:, 1] > 0).astype("int64") + (x[:, 2] > 0.5)


def build(group: str) -> keras.Model:
    import tfcompress
    from tfcompress.layers.variational_bn import VariationalBatchNormalization as VBN
    from tfcompress.pruning import ConstantSparsity, PolynomialDecay

    keras.utils.set_random_seed(0)
    x = keras.Input((6,), name="x")
    if group == "pruning":
        h = keras.layers.Dense(16, name="fc1")(x)
        # gammas spread over (0.05, 1): VariationalPruning(tau=0.3) cuts some after epoch 0
        h = VBN(dataset_size=SAMPLES, seed=1, name="vbn",
                gamma_initializer=keras.initializers.RandomUniform(0.05, 1.0, seed=2))(h)
        h = keras.layers.ReLU(name="relu")(h)
        schedule = PolynomialDecay(0.0, 0.6, begin_step=0, end_step=20, frequency=4)
    else:
        h = keras.layers.Dense(16, activation="relu", name="fc1")(x)
        schedule = ConstantSparsity(0.7, begin_step=0, end_step=0)
    model = keras.Model(x, keras.layers.Dense(3, name="out")(h), name=f"{group}_net")
    pruned = tfcompress.prune(model, schedule)
    pruned.compile(keras.optimizers.Adam(0.01),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return pruned


def ours(group: str, log_dir: str) -> list[keras.callbacks.Callback]:
    from tfcompress import callbacks as cb

    summaries = cb.CompressionSummaries(log_dir, update_freq=3)
    if group == "sparse":
        return [cb.SparseTraining("rigl", update_freq=3, drop_fraction=0.3, total_steps=EPOCHS * BATCH,
                                  data=data(), batch_size=32, seed=0), summaries]
    return [
        cb.UpdatePruning(),
        cb.WeightRewinding(rewind_step=3),  # recorded before the checkpoint, rewound after it
        cb.LearningRateRewinding(keras.optimizers.schedules.ExponentialDecay(0.05, 8, 0.7), rewind_step=2),
        cb.KLAnnealing(warmup_epochs=3, per_step=True),
        cb.VariationalPruning(tau=0.3, theta=1.0),
        cb.PosteriorPruning({"vbn": 6}, begin_step=4, end_step=28, frequency=4),
        summaries,
    ]


class KillSelf(keras.callbacks.Callback):
    """kill -9 of the training process once ``after`` batches are done."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.seen = after, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.after:
            os.kill(os.getpid(), signal.SIGKILL)


def run(group: str, order: str, directory: str, kill_after: int | None = None) -> keras.Model:
    """Train ``group`` with its callbacks in ``order``, backing up to ``directory``/backup."""
    model = build(group)
    mine = ours(group, os.path.join(directory, "logs"))
    backup = keras.callbacks.BackupAndRestore(os.path.join(directory, "backup"), save_freq="epoch")
    # CompressionSummaries reports the model as it is when it runs: last, after the callbacks that
    # change it in the same hook, in both orders (its values are then the same in both)
    *changing, summaries = mine
    callbacks = [*changing, summaries, backup] if order == "ours_first" else [backup, *reversed(changing), summaries]
    if kill_after is not None:
        callbacks.append(KillSelf(kill_after))
    x, y = data()
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)
    return model


def start_killed_run(group: str, order: str, directory: Path) -> subprocess.Popen:
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import test_callback_order as t; "
            "t.run(sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(ROOT / "tests"), group, order,
                             str(directory), str(KILL_AFTER)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def snapshot(model: keras.Model) -> dict[str, np.ndarray]:
    """Every variable of the model (masks, steps, KL weights, BN statistics, noise seeds: the
    variables save_weights writes) and of its optimizer (step, learning rate, moments)."""
    state = {f"model/{v.path}": keras.ops.convert_to_numpy(v) for v in model.variables
             if "seed_generator" not in v.path}  # named by a process-wide counter: by layer below
    for layer in model._flatten_layers(include_self=False, recursive=True):
        seed = getattr(layer, "seed_generator", None)
        if seed is not None:
            state[f"seed/{layer.name}"] = keras.ops.convert_to_numpy(seed.state)
    for i, v in enumerate(model.optimizer.variables):
        state[f"optimizer/{i}/{v.name}"] = keras.ops.convert_to_numpy(v)
    return state


def events(log_dir: str) -> dict[tuple[str, int], float]:
    """``{(tag, step): value}`` of every scalar in the event files; a step written twice (the
    killed run's part of an epoch, written again by the resumed run) must hold the same value."""
    import tensorflow as tf

    found: dict[tuple[str, int], float] = {}
    for path in sorted(glob.glob(f"{log_dir}/compression/events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "scalars":
                    continue
                number = float(tf.make_ndarray(value.tensor))
                key = (value.tag, int(event.step))
                if key in found:
                    assert number == pytest.approx(found[key], abs=1e-5), key
                found[key] = number
    return found


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """The four killed runs, started together (they spend most of their time importing TF)."""
    root = tmp_path_factory.mktemp("killed")
    return {(g, o): (root / f"{g}_{o}", start_killed_run(g, o, root / f"{g}_{o}"))
            for g in GROUPS for o in ORDERS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, killed):
    """Uninterrupted runs (no kill), with the same callbacks and BackupAndRestore."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for group in GROUPS:
        model = run(group, "ours_first", str(root / group))
        out[group] = snapshot(model), events(str(root / group / "logs"))
    return out


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("group", GROUPS)
def test_kill_9_mid_epoch_and_resume_equals_an_uninterrupted_run(group, order, killed, reference):
    directory, process = killed[group, order]
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    metadata = json.loads((directory / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 1  # the last checkpoint: the end of epoch 1 of 5
    resumed = run(group, order, str(directory))
    expected, expected_events = reference[group]
    state = snapshot(resumed)
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(state[key], value, rtol=0, atol=1e-6, err_msg=key)
    assert int(resumed.optimizer.iterations.numpy()) == EPOCHS * BATCH
    from tfcompress.pruning import pruning_wrappers

    assert {int(w.pruning_step.numpy()) for w in pruning_wrappers(resumed)} == {EPOCHS * BATCH}
    # the schedules really acted, before and after the checkpoint the run resumed from
    masks = [w.mask.numpy() for w in pruning_wrappers(resumed)]
    assert all(0 < m.mean() < 0.5 for m in masks)
    if group == "pruning":
        assert resumed.get_layer("vbn").mask.numpy().sum() <= 6  # PosteriorPruning's keep (or less)
        assert "_tfcompress_weight_rewinding" not in vars(resumed)  # its state left with fit
    got_events = events(str(directory / "logs"))
    assert got_events.keys() == expected_events.keys()
    for key, value in expected_events.items():
        assert got_events[key] == pytest.approx(value, abs=1e-5), key

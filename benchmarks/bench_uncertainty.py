"""Uncertainty at the edge (issue 21): posteriors compiled to one int8 file, measured on LiteRT.

Fashion-MNIST in distribution; out of distribution: scikit-learn's 8x8 digits upsampled to
28x28, and Fashion-MNIST rotated 90 degrees. Every row is an int8 ``.tflite`` file evaluated
on LiteRT (its default CPU kernels); TFLite Micro is checked bit for bit against LiteRT's
reference kernels on a few images; the Keras float model's NLL / ECE are kept beside it to show
what int8 costs. Ratios are to the single model.

    python benchmarks/bench_uncertainty.py              # the recorded run
    python benchmarks/bench_uncertainty.py --limit 3000 # smoke run (RESULTS.md left alone)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from common import add_latency, load_data, public  # noqa: E402

CLASSES = 10


def ood_sets(data, n: int) -> dict[str, np.ndarray]:
    """Digits upsampled 8x8 -> 28x28 (nearest, padded to 28) and Fashion-MNIST rotated 90 degrees."""
    from tfcompress.datasets import digits

    (x_digits, _), _ = digits()
    up = np.kron(x_digits[..., 0], np.ones((3, 3), "float32"))          # 24x24
    up = np.pad(up, ((0, 0), (2, 2), (2, 2)))[..., None].astype("float32")
    rotated = np.rot90(data.x_test, k=1, axes=(1, 2)).copy()
    return {"digits": up[:n], "rotated": rotated[:n]}


def cnn(seed: int, widths=(16, 32, 64), dropout: float = 0.3):
    import keras

    keras.utils.set_random_seed(seed)
    c1, c2, d = widths
    return keras.Sequential([
        keras.Input((28, 28, 1), name="image"),
        keras.layers.Conv2D(c1, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(c2, 3, activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(d, activation="relu", name="fc1"),
        keras.layers.Dropout(dropout, name="dropout"),
        keras.layers.Dense(CLASSES, name="logits"),
    ], name=f"cnn_{seed}")


def batch_ensemble_cnn(members: int, widths=(16, 32, 64)):
    """The CNN with BatchEnsemble layers (Wen et al. 2020): S members in one pass, rank-1 fast weights."""
    import keras

    from tfcompress.uncertainty import (
        BatchEnsembleConv2D,
        BatchEnsembleDense,
        StackMembers,
        TileMembers,
    )

    keras.utils.set_random_seed(0)
    c1, c2, d = widths
    x = keras.Input((28, 28, 1), name="image")
    h = TileMembers(members)(x)
    h = BatchEnsembleConv2D(c1, 3, members=members, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = BatchEnsembleConv2D(c2, 3, members=members, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = BatchEnsembleDense(d, members=members, activation="relu")(h)
    h = BatchEnsembleDense(CLASSES, members=members)(h)
    return keras.Model(x, StackMembers(members)(h), name="batch_ensemble")


def mimo_backbone(members: int, widths=(16, 32, 64)):
    """The CNN's body on M stacked inputs (MIMO, Havasi et al. 2021)."""
    import keras

    keras.utils.set_random_seed(0)
    c1, c2, d = widths
    x = keras.Input((28, 28, members))
    h = keras.layers.Conv2D(c1, 3, activation="relu")(x)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(c2, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Dense(d, activation="relu")(keras.layers.Flatten()(h))
    return keras.Model(x, h, name="mimo_backbone")


def train(model, data, epochs: int, seed: int, callbacks=None, lr: float = 2e-3, optimizer=None, x=None, y=None):
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer or keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train if x is None else x, data.y_train if y is None else y, epochs=epochs,
              batch_size=128, verbose=0, callbacks=callbacks or [])
    return model


def single_posterior(model):
    """One model as a 1-member graph with the same head, so every row is read the same way."""
    import keras

    from tfcompress.uncertainty import UncertaintyHead

    x = keras.Input(model.input_shape[1:], name="image")
    z = keras.layers.Reshape((1, CLASSES))(model(x))
    return keras.Model(x, UncertaintyHead(name="uncertainty")(z), name="single")


def calibrated_single(model, data):
    """One model with temperature scaling fitted on the held-out split, T folded into its logits."""
    from tfcompress.uncertainty import fit_temperature, scale_logits

    t = fit_temperature(model.predict(data.x_val, batch_size=512, verbose=0), data.y_val)
    return scale_logits(model, 1.0 / t), t


def raw_nll(logits: np.ndarray, y: np.ndarray) -> float:
    from tfcompress.uncertainty import tempered_nll

    return round(tempered_nll(logits, y, 1.0), 4)


def evaluate_row(name: str, path: Path, keras_model, data, ood, extra: dict) -> dict:
    from tfcompress.export import load_tflite, to_micro
    from tfcompress.metrics import tflite_macs
    from tfcompress.uncertainty import run_tflite
    from tfcompress.uncertainty.metrics import evaluate_uncertainty

    def metrics_of(outputs_in, outputs_ood):
        scores = {k: outputs_in[k] for k in ("total", "knowledge") if k in outputs_in}
        report = evaluate_uncertainty(outputs_in["probs"], data.y_test, log_probs=outputs_in["log_probs"],
                                      scores=scores)
        aurocs = {}
        for ood_name, out in outputs_ood.items():
            r = evaluate_uncertainty(outputs_in["probs"], data.y_test, scores=scores,
                                     probs_ood=out["probs"], scores_ood={k: out[k] for k in scores})
            aurocs[ood_name] = {k: v["auroc"] for k, v in r.ood.items()}
        return report, aurocs

    tfl_in = run_tflite(path, data.x_test)             # LiteRT's default CPU kernels (XNNPACK)
    tfl_ood = {k: run_tflite(path, v) for k, v in ood.items()}
    report, aurocs = metrics_of(tfl_in, tfl_ood)
    float_out = keras_model.predict(data.x_test, batch_size=512, verbose=0)
    float_report = evaluate_uncertainty(float_out["probs"], data.y_test, log_probs=float_out["log_probs"])
    parsed = load_tflite(path)
    with tempfile.TemporaryDirectory() as micro_dir:
        micro = to_micro(path, micro_dir, "m", samples=data.x_test[:8])
    row = {
        "model": name,
        "accuracy": round(report.accuracy, 4),
        "NLL": round(report.nll, 4),
        "ECE": round(report.ece, 4),
        "Brier": round(report.brier, 4),
        "NLL float": round(float_report.nll, 4),
        "ECE float": round(float_report.ece, 4),
        "AUROC digits (max-softmax)": round(aurocs["digits"]["max_softmax"], 3),
        "AUROC digits (total)": round(aurocs["digits"]["total"], 3),
        "AUROC digits (knowledge)": round(aurocs["digits"].get("knowledge", float("nan")), 3),
        "AUROC rotated (total)": round(aurocs["rotated"]["total"], 3),
        "AUROC rotated (knowledge)": round(aurocs["rotated"].get("knowledge", float("nan")), 3),
        "int8 bytes": parsed.size_bytes,
        "weight bytes": parsed.weight_stats()["weight_bytes"],
        "arena bytes": micro.arena_total_bytes,
        "TFLM = LiteRT-ref": micro.identical,
        "MACs": sum(r["macs"] for r in tflite_macs(parsed)),
        "int8 ops": f"{parsed.int8_coverage():.0%}",
        "_path": str(path),
        "_probs": tfl_in["probs"],
    }
    row.update(extra)
    return row


def add_ratios(rows: list[dict]) -> None:
    base = rows[0]
    for row in rows:
        for column in ("int8 bytes", "arena bytes", "MACs", "NLL"):
            row[f"{column} vs single"] = round(row[column] / base[column], 3)


def plot_rows(rows: list[dict], data) -> list[Path]:
    """Reliability diagrams, accuracy-rejection curves and size / NLL of the int8 files (PNG)."""
    try:
        import tfcompress.plots as plots
    except ImportError:
        return []
    from tfcompress.errors import TfcompressError
    from tfcompress.uncertainty.metrics import reliability_diagram, selective_prediction

    shown = [r for r in rows if r["model"].split()[0] in ("single", "ensemble", "mc_dropout", "cSGHMC",
                                                           "shared-structure", "bdk")]
    try:
        return [
            Path(plots.reliability_plot({r["model"]: reliability_diagram(r["_probs"], data.y_test) for r in shown},
                                        harness.figure_path("uncertainty_reliability.png"),
                                        title="int8 files on LiteRT, Fashion-MNIST test")),
            Path(plots.rejection_plot({r["model"]: selective_prediction(r["_probs"], data.y_test) for r in shown},
                                      harness.figure_path("uncertainty_rejection.png"),
                                      title="reject the least confident first")),
            Path(plots.pareto_plot(rows, "int8 bytes", "NLL", harness.figure_path("uncertainty_pareto.png"),
                                   title="int8 file size against NLL", log_x=True)),
        ]
    except TfcompressError as exc:  # matplotlib missing: the tables are still the result
        print(f"no plots: {exc}")
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="train on this many samples (smoke run)")
    parser.add_argument("--train", type=int, default=20000, help="training images (of 60,000)")
    parser.add_argument("--val", type=int, default=5000,
                        help="held-out training images after the first --train, for temperature scaling only")
    parser.add_argument("--test", type=int, default=5000, help="test images (of 10,000); OOD sets: 2,000 each")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "uncertainty")
    args = parser.parse_args()

    import keras

    import tfcompress
    from tfcompress.callbacks import UpdatePruning
    from tfcompress.pruning import ConstantSparsity
    from tfcompress.uncertainty import ensemble, mc_dropout

    train_n = args.limit or args.train
    val_n = min(args.val, 1000) if args.limit else args.val
    data = load_data(train_n + val_n)
    data.x_val, data.y_val = data.x_train[train_n:], data.y_train[train_n:]
    data.x_train, data.y_train = data.x_train[:train_n], data.y_train[:train_n]
    test_n = 2000 if args.limit else args.test
    data.x_test, data.y_test = data.x_test[:test_n], data.y_test[:test_n]
    ood = ood_sets(data, min(test_n, 2000))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    calibration = data.x_train[:500]
    epochs = 2 if args.limit else args.epochs
    rows: list[dict] = []

    def export(name: str, posterior_or_model, extra: dict) -> None:
        """Temperature-scale on the held-out split (T folded in), export int8, evaluate the file."""
        path = out / f"{name.split()[0].lower()}.tflite"
        from tfcompress.export import compact_tflite, to_tflite

        if hasattr(posterior_or_model, "to_tflite"):
            raw = raw_nll(posterior_or_model.member_logits(data.x_test), data.y_test)
            posterior_or_model = posterior_or_model.calibrate(data.x_val, data.y_val)
            posterior_or_model.to_tflite(path, calibration, compare_single=False)
            model, t = posterior_or_model.model, posterior_or_model.temperature
        else:
            raw = raw_nll(posterior_or_model.predict(data.x_test, batch_size=512, verbose=0), data.y_test)
            model, t = calibrated_single(posterior_or_model, data)
            model = single_posterior(model)
            to_tflite(model, path, "int8", calibration, dense_as_conv=True)
            compact_tflite(path, path)  # as Posterior.to_tflite does
        extra = {"T": round(t, 3), "NLL float (T=1)": raw, **extra}
        rows.append(evaluate_row(name, path, model, data, ood, extra))
        print(public(rows[-1:]), flush=True)

    # single model (the reference of every ratio)
    members = [train(cnn(seed), data, epochs, seed) for seed in range(args.members)]
    export("single", members[0], {"members": 1})

    # deep ensemble (Lakshminarayanan et al. 2017): S independently trained members
    export(f"ensemble S={args.members}", ensemble(members), {"members": args.members})

    # MC dropout: S=8 frozen masks over the single model's weights
    export("mc_dropout S=8", mc_dropout(members[0], samples=8, seed=0), {"members": 8})

    # cyclical SG-MCMC (Zhang et al. 2020): cSGHMC along 5 cycles, the last sample of each cycle
    from tfcompress.uncertainty import SGHMC, CyclicalSGMCMC

    steps = -(-len(data.x_train) // 128)
    sgld_cycle = max(1, epochs * 2 // args.members) * steps
    sampler = CyclicalSGMCMC(cycles=args.members, steps_per_cycle=sgld_cycle, initial_learning_rate=0.05,
                             exploration=0.8, samples_per_cycle=1)
    # friction 0.1: the dynamics of SGD with momentum 0.9 (the snapshot row's optimizer) plus the noise
    sgld_model = train(cnn(40, dropout=0.0), data, sgld_cycle * args.members // steps, 40, callbacks=[sampler],
                       optimizer=SGHMC(0.05, friction=0.1, dataset_size=len(data.x_train), seed=0))
    export(f"cSGHMC S={len(sampler.samples)}", ensemble(sampler.members(sgld_model), name="csghmc"),
           {"members": len(sampler.samples)})

    # snapshot ensemble (Huang et al. 2017): S cosine cycles of SGD with momentum, one snapshot each
    from tfcompress.uncertainty import (
        SnapshotEnsemble,
        from_stacked,
        mimo_inference_model,
        mimo_inputs,
        mimo_model,
    )

    per_cycle = max(1, epochs * 2 // args.members) * steps
    snapshot = SnapshotEnsemble(cycles=args.members, steps_per_cycle=per_cycle, initial_learning_rate=0.05)
    snap_model = train(cnn(50), data, per_cycle * args.members // steps, 50, callbacks=[snapshot],
                       optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    export(f"snapshot S={len(snapshot.samples)}", ensemble(snapshot.members(snap_model), name="snapshot"),
           {"members": len(snapshot.samples)})

    # BatchEnsemble S=4: one pass, shared slow weights and rank-1 fast weights per member
    y_members = np.repeat(data.y_train[:, None], 4, axis=1)
    be = train(batch_ensemble_cnn(4), data, epochs, 60, y=y_members)
    export("batch_ensemble S=4", from_stacked(be, single=members[0], kind="batch_ensemble"), {"members": 4})

    # MIMO S=3: one backbone on 3 stacked inputs, independent examples per member in training
    mimo = mimo_model(mimo_backbone(3), members=3, classes=CLASSES)
    x_mimo, y_mimo = mimo_inputs(data.x_train, data.y_train, 3, repetition=0.5, seed=0)
    train(mimo, data, epochs, 70, x=x_mimo, y=y_mimo)
    export("mimo S=3", from_stacked(mimo_inference_model(mimo), single=members[0], kind="mimo"), {"members": 3})

    # shared structure (seed section 3): prune channels 50% once, then train S members in it
    pruned = tfcompress.prune(members[0], ConstantSparsity(0.5, 0), granularity="channel")
    train(pruned, data, 1, 0, callbacks=[UpdatePruning()])
    structure = tfcompress.shrink(tfcompress.strip(pruned))
    shared = []
    for seed in range(args.members):
        keras.utils.set_random_seed(100 + seed)
        member = keras.models.clone_model(structure)   # the structure, fresh weights
        shared.append(train(member, data, epochs, 100 + seed))
    export(f"shared-structure S={args.members} (50% channels)", ensemble(shared, name="shared"),
           {"members": args.members, "params per member": structure.count_params()})

    # distillation of the ensemble into one single-model-sized student (seed section 4)
    from tfcompress.uncertainty import (
        EnsembleDistributionDistiller,
        TemperatureAnnealing,
        bayesian_dark_knowledge,
        transfer_dataset,
        uncertainty_model,
    )

    # Bayesian dark knowledge (Balan et al. 2015): the student learns the predictive mean, on the
    # training images and Gaussian-perturbed copies of them (fresh noise each epoch)
    distiller = bayesian_dark_knowledge(cnn(80), members, temperature=1.0, alpha=0.0)
    distiller.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller.fit(transfer_dataset(data.x_train, data.y_train, noise_std=0.1, batch_size=128, seed=0),
                  epochs=2 * epochs, verbose=0)
    export("bdk student", distiller.student, {"members": 1})

    # EnD^2 (Malinin et al. 2020): the student's outputs are Dirichlet log-concentrations
    end2 = EnsembleDistributionDistiller(cnn(90), members, temperature=2.5)
    end2.compile(keras.optimizers.Adam(2e-3))
    end2.fit(data.x_train, epochs=epochs, batch_size=128, verbose=0,
             callbacks=[TemperatureAnnealing(2.5, hold_epochs=max(1, epochs // 3), decay_epochs=max(1, epochs // 3))])
    end2_model = uncertainty_model(end2.student, "end2")
    end2_path = out / "end2.tflite"
    from tfcompress.export import compact_tflite, to_tflite

    to_tflite(end2_model, end2_path, "int8", calibration, dense_as_conv=True)
    compact_tflite(end2_path, end2_path)
    rows.append(evaluate_row("end2 student", end2_path, end2_model, data, ood, {"T": "n/a", "members": 1}))

    add_ratios(rows)
    add_latency(rows, runs=300)
    figures = plot_rows(rows, data)
    columns = [c for c in public(rows)[0] if c != "members"] + ["members"]
    harness.record(
        "uncertainty",
        "Posteriors compiled into one int8 file (Fashion-MNIST; OOD: digits, rotated)",
        columns, public(rows),
        notes=[f"small CNN (2 conv + 2 dense, {members[0].count_params():,} params) trained {epochs} epochs "
               f"on {len(data.x_train):,} Fashion-MNIST images; metrics on {test_n:,} test images from the "
               "int8 file on LiteRT (XNNPACK); NLL from the file's probs and log_probs outputs "
               "(uncertainty.metrics.negative_log_likelihood)",
               "AUROC: in-distribution test set against each OOD set, scored by the named uncertainty",
               "TFLM = LiteRT-ref: to_micro on 8 test images, every output bit for bit",
               f"temperature scaling (Posterior.calibrate, Guo et al. 2017): one T per row fitted on "
               f"{len(data.x_val):,} held-out training images, folded into the members' logit layers; "
               "'NLL float (T=1)' is the uncalibrated Keras model on the test set, every other metric is "
               "the calibrated int8 file's; the EnD^2 student (Dirichlet outputs) is not temperature-scaled",
               "every file compacted (Posterior.to_tflite(compact=True), tfcompress.export.compact_tflite: "
               "no intermediate tensor names, redundant shape signatures or empty buffers)"],
        figures=figures,
    )
    print(harness.table(columns, public(rows)))


if __name__ == "__main__":
    main()

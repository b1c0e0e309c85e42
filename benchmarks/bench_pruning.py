"""Pruning benchmark (issue 3): LeNet-5-Caffe on Fashion-MNIST, one run, tfmot as the peer.

    python benchmarks/bench_pruning.py --pretrain-epochs 4 --epochs 4

Protocol, the same for every row: one dense model is pre-trained for ``--pretrain-epochs``
(Adam 1e-3, batch 128); every row then starts from those weights and trains ``--epochs`` more
with the same optimizer: the dense baseline plainly, the pruned rows with a PolynomialDecay
schedule from 0 to the target sparsity over the first 60% of the fine-tuning steps
(frequency 100). Exported rows are full int8, measured on LiteRT; latencies are interleaved
in one LiteRT run (1 thread), ratios to the dense row. Training seconds per epoch are the
median of the steady epochs; the overhead ratio is against the plain fine-tuning of the same
process. The tfmot row runs the same protocol under tf_keras in a subprocess
(benchmarks/peer_tfmot.py); its overhead ratio is against its own plain tf_keras fit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import harness  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images (smoke runs)")
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()

    import keras
    import numpy as np

    import tfcompress
    from tfcompress.callbacks import SparseTraining, UpdatePruning, WeightRewinding
    from tfcompress.schedules import ConstantSparsity, PolynomialDecay

    data = common.load_data(args.limit)
    steps_per_epoch = int(np.ceil(len(data.x_train) / args.batch_size))
    steps = steps_per_epoch * args.epochs
    end_step = int(0.6 * steps)

    dense = common.compile_model(common.lenet())
    dense.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.pretrain_epochs, verbose=2)
    pretrained = dense.get_weights()

    def fresh():
        model = common.lenet()
        model.set_weights(pretrained)
        return model

    rows: list[dict] = []
    baseline = common.compile_model(fresh())
    plain_seconds = common.timed_fit(baseline, data, args.epochs, args.batch_size)
    rows.append(common.export_row("dense", baseline, data, **{"s/epoch": round(plain_seconds, 2),
                                                               "train overhead": 1.0}))

    def pruned_row(name, *, sparsity, granularity="weight", scope="layer", shrink=False, callbacks=None,
                   schedule=None, **prune_kwargs):
        schedule = schedule or PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end_step, frequency=100)
        model = tfcompress.prune(fresh(), schedule=schedule, granularity=granularity, scope=scope,
                                 **prune_kwargs)
        common.compile_model(model)
        seconds = common.timed_fit(model, data, args.epochs, args.batch_size, callbacks or [UpdatePruning()])
        final = tfcompress.strip(model)
        if shrink:
            final = tfcompress.shrink(final)
        common.compile_model(final)
        return common.export_row(name, final, data, **{"s/epoch": round(seconds, 2),
                                                       "train overhead": round(seconds / plain_seconds, 3)})

    rows.append(pruned_row("magnitude 90%", sparsity=0.9))
    rows.append(pruned_row("magnitude 95%", sparsity=0.95))
    rows.append(pruned_row("global magnitude 90%", sparsity=0.9, scope="global"))
    rows.append(pruned_row("2:4", sparsity=0.5, granularity="2:4"))
    rows.append(pruned_row("channels 50% + shrink", sparsity=0.5, granularity="channel", shrink=True))
    rows.append(pruned_row("channels 60% + shrink", sparsity=0.6, granularity="channel", shrink=True))
    rows.append(pruned_row("channels 70% + shrink", sparsity=0.7, granularity="channel", shrink=True))
    # Lottery ticket: prune to 90% over the first 60% of steps, rewind the survivors to the
    # pre-trained weights (step 0 of this fit) and retrain them for the remaining 40%.
    rows.append(pruned_row("lottery-ticket rewinding 90%", sparsity=0.9,
                           callbacks=[UpdatePruning(), WeightRewinding(rewind_step=0)]))
    # RigL: fixed 90% sparsity from the first step (ERK masks), connectivity updated every 100 steps.
    rows.append(pruned_row("RigL 90% (ERK)", sparsity=0.9, schedule=ConstantSparsity(0.9, 0, 0), callbacks=[
        SparseTraining("rigl", update_freq=100, total_steps=steps, distribution="erk",
                       data=(data.x_train, data.y_train))]))

    if not args.skip_peer:
        from peer_tfmot import run_peer

        peer = run_peer("prune", data, str(common._OUT / "tfmot_prune_90.tflite"),
                        pretrain_epochs=args.pretrain_epochs, epochs=args.epochs,
                        batch_size=args.batch_size, sparsity=0.9, end_fraction=0.6)
        from tfcompress.export.tflite_file import load_tflite

        parsed = load_tflite(peer["path"])
        rows.append({
            "model": f"tfmot prune_low_magnitude 90% (tf_keras, tfmot {peer['tfmot']})",
            "keras accuracy": round(peer["keras_accuracy"], 4),
            "int8 accuracy (LiteRT)": round(peer["int8_accuracy"], 4),
            "params": rows[0]["params"],
            "non-zero params": peer["nonzero_params"],
            "MACs": rows[0]["MACs"],
            "int8 size (bytes)": parsed.size_bytes,
            "int8 gzip (bytes)": parsed.gzip_size_bytes,
            "int8 zero weights": parsed.weight_stats()["weight_zeros"],
            "s/epoch": round(peer["seconds_per_epoch"], 2),
            "train overhead": round(peer["overhead_vs_plain_fit"], 3),
            "_path": peer["path"],
        })

    common.add_latency(rows, runs=args.runs)
    columns = ["model", "keras accuracy", "int8 accuracy (LiteRT)", "non-zero params", "MACs",
               "int8 size (bytes)", "int8 gzip (bytes)", "int8 zero weights", "p50 ms (1 thread)",
               "latency vs first", "s/epoch", "train overhead"]
    dense_row = rows[0]
    by_name = {r["model"]: r for r in rows}
    notes = [
        f"{args.pretrain_epochs} dense pre-training epochs, then {args.epochs} epochs per row "
        f"(Adam 1e-3, batch {args.batch_size}); PolynomialDecay(0 -> target, power 3) over the first "
        f"{end_step} of {steps} fine-tuning steps, frequency 100. keras.__version__ {keras.__version__}.",
        "train overhead: a row's s/epoch over the dense row's, trained one after the other in this run (the tfmot "
        "row: over its own plain tf_keras fit); the interleaved, side-by-side measurement of the overhead is the "
        "'training overhead vs plain fit' table (benchmarks/bench_overhead.py).",
        "Accuracy deltas vs dense (int8 on LiteRT): " + ", ".join(
            f"{r['model']} {100 * (r['int8 accuracy (LiteRT)'] - dense_row['int8 accuracy (LiteRT)']):+.2f}"
            for r in rows[1:]) + " points.",
    ]
    for name in ("channels 50% + shrink", "channels 60% + shrink", "channels 70% + shrink"):
        r = by_name[name]
        notes.append(f"{name}: {dense_row['MACs'] / r['MACs']:.2f}x fewer MACs than dense, LiteRT latency "
                     f"{r['latency vs first']:.3f}x dense (MAC ratio {r['MACs'] / dense_row['MACs']:.3f}).")
    harness.record("03_pruning_lenet5_fashion_mnist", "Pruning: LeNet-5-Caffe on Fashion-MNIST",
                   columns, common.public(rows), notes,
                   extra={"pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs})
    print(harness.table(columns, rows))
    print("\n".join(notes))


if __name__ == "__main__":
    main()

"""Bayesian structured pruning benchmark (issue 4): LeNet-5-Caffe on Fashion-MNIST, one run.

    python benchmarks/bench_bayesian.py --pretrain-epochs 4 --epochs 6 --kl-max 1.0

Protocol: one dense model is pre-trained for ``--pretrain-epochs`` (Adam 1e-3, batch 128). Every
Bayesian row converts it with ``tfcompress.bayesian.convert`` and trains ``--epochs`` more
(Adam 1e-3; the KL weight warmed up linearly over the first half to ``--kl-max``, which is the
beta of a beta-ELBO: 1 is the plain ELBO), then ``bayesian.strip`` + ``shrink`` give a small
ordinary model that is exported to full int8 and measured on LiteRT; nothing is retrained
unless the row says so. The magnitude row prunes 70% of channels with the issue-3 flow
(prune / UpdatePruning / strip / shrink) over the same epochs. Latencies: one interleaved
LiteRT run, 1 thread, ratio to dense.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import harness  # noqa: E402

PUBLISHED = [  # seed slides, MNIST LeNet-5-Caffe; published figures, not measured here
    {"model": "published (MNIST): Dirichlet", "error %": 1.1, "params": 5_500, "FLOPs": 140_000},
    {"model": "published (MNIST): BC-GNJ", "error %": 1.0, "params": 15_000, "FLOPs": 288_000},
    {"model": "published (MNIST): SBP", "error %": 0.9, "params": 99_000, "FLOPs": 226_000},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--kl-max", type=float, default=1.0, help="beta of the beta-ELBO at the end of warm-up")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--methods", default="slimming,vcp,dirichlet,sbp,sparse_vd,bc")
    args = parser.parse_args()

    import keras
    import numpy as np

    import tfcompress
    from tfcompress import bayesian
    from tfcompress.batchnorm import recalibrate_batchnorm
    from tfcompress.callbacks import KLAnnealing, UpdatePruning, VariationalPruning
    from tfcompress.schedules import PolynomialDecay

    data = common.load_data(args.limit)
    n = len(data.x_train)
    steps = int(np.ceil(n / args.batch_size)) * args.epochs
    dense = common.compile_model(common.lenet())
    dense.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.pretrain_epochs, verbose=2)
    pretrained = dense.get_weights()

    def fresh():
        model = common.lenet()
        model.set_weights(pretrained)
        return model

    def kept(report) -> str:
        return report.structure()

    rows: list[dict] = []
    baseline = common.compile_model(fresh())
    started = time.perf_counter()
    baseline.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    _, base_report = tfcompress.shrink(baseline, return_report=True)
    rows.append(common.export_row("dense", baseline, data, **{
        "channels": kept(base_report), "train s": round(time.perf_counter() - started)}))

    schedule = PolynomialDecay(0.0, 0.7, begin_step=0, end_step=int(0.6 * steps), frequency=100)
    pruned = common.compile_model(tfcompress.prune(fresh(), schedule=schedule, granularity="channel"))
    started = time.perf_counter()
    pruned.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2,
               callbacks=[UpdatePruning()])
    small, report = tfcompress.shrink(pruned, return_report=True)
    rows.append(common.export_row("magnitude channels 70% (issue 3)", common.compile_model(small), data, **{
        "channels": kept(report), "train s": round(time.perf_counter() - started)}))

    annealing = {"warmup_epochs": max(1, args.epochs // 2), "max_weight": args.kl_max}
    for method in args.methods.split(","):
        extra = {}
        if method == "dirichlet":
            extra = {"prior_concentration": 0.5, "estimator": "reparameterized"}
        model = bayesian.convert(fresh(), method, dataset_size=n, **extra)
        callbacks = [KLAnnealing(**annealing)] if method != "slimming" else []
        if method == "vcp":
            callbacks.append(VariationalPruning(tau=0.05, theta=0.2))
        lr = 1e-2 if method == "dirichlet" else 1e-3  # only the switches train for Dirichlet
        common.compile_model(model, lr)
        started = time.perf_counter()
        model.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2,
                  callbacks=callbacks)
        seconds = round(time.perf_counter() - started)
        if method in ("vcp", "slimming"):
            # the BN layers inserted into LeNet start with identity statistics: set them to the data's
            recalibrate_batchnorm(model, data.x_train[:1000])
        threshold = 1e-2 if method == "slimming" else None
        plain = bayesian.strip(model, slimming_threshold=threshold)
        small, report = tfcompress.shrink(plain, return_report=True)
        common.compile_model(small)
        label = {"vcp": "VCP", "dirichlet": "Dirichlet", "sbp": "SBP", "sparse_vd": "sparse VD",
                 "bc": "BC-GNJ", "slimming": "network slimming"}[method]
        row = common.export_row(label + (" (no retraining)" if method == "vcp" else ""), small, data, **{
            "channels": kept(report), "train s": seconds})
        if method == "bc":
            bits = [layer.bit_precision() for layer in model.layers if hasattr(layer, "bit_precision")]
            row["note"] = "bits per layer " + "-".join(str(b) for b in bits)
        rows.append(row)
        if method == "vcp":
            started = time.perf_counter()
            small.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=1, verbose=2)
            rows.append(common.export_row("VCP + 1 epoch retraining", small, data, **{
                "channels": kept(report), "train s": seconds + round(time.perf_counter() - started)}))
        keras.backend.clear_session(free_memory=False)

    common.add_latency(rows, runs=args.runs)
    dense_row = rows[0]
    for row in rows:
        # stored parameters of the shrunk model: what the int8 file holds (zeros inside a
        # kernel are stored too), so sparse VD is not credited for its unstructured zeros here
        row["params ratio"] = round(dense_row["params"] / max(row["params"], 1), 1)
        row["non-zero ratio"] = round(dense_row["non-zero params"] / max(row["non-zero params"], 1), 1)
        row["MACs ratio"] = round(dense_row["MACs"] / max(row["MACs"], 1), 1)
        row["accuracy delta (pts)"] = round(100 * (row["int8 accuracy (LiteRT)"] - dense_row["int8 accuracy (LiteRT)"]), 2)
    columns = ["model", "channels", "params", "params ratio", "non-zero params", "non-zero ratio", "MACs", "MACs ratio",
               "int8 accuracy (LiteRT)", "accuracy delta (pts)", "int8 size (bytes)", "p50 ms (1 thread)",
               "latency vs first", "train s", "note"]
    published_rows = [{"model": p["model"], "note": f"error {p['error %']}%, {p['params']:,} params, "
                       f"{p['FLOPs']:,} FLOPs (published MNIST figure, not ours)"} for p in PUBLISHED]
    notes = [
        f"{args.pretrain_epochs} dense pre-training epochs, then {args.epochs} epochs per row; KL weight warmed up "
        f"linearly to {args.kl_max} over {annealing['warmup_epochs']} epochs; Dirichlet trains only the switches "
        "(Adam 1e-2, prior 0.5); VCP prunes after each epoch with tau=0.05, theta=0.2; slimming drops |gamma| <= 0.01.",
        "params = parameters stored by the shrunk model (its int8 file holds them all); non-zero params also "
        "leave out the zeros inside kernels (sparse VD's unstructured sparsity); MACs of the shrunk dense model.",
        "VCP and slimming rows: LeNet-5-Caffe has no BatchNormalization, so convert inserts it; those layers' "
        "moving statistics are recalibrated on 1,000 training images (forward passes only, no gradient step) "
        "before strip; 'no retraining' means no training after pruning.",
    ]
    harness.record("04_bayesian_lenet5_fashion_mnist", "Bayesian structured pruning: LeNet-5-Caffe on Fashion-MNIST",
                   columns, common.public(rows) + published_rows, notes,
                   extra={"pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs, "kl_max": args.kl_max})
    print(harness.table(columns, rows + published_rows))
    print("\n".join(notes))


if __name__ == "__main__":
    main()

"""Quantization benchmark (issue 5): LeNet-5-Caffe on Fashion-MNIST, one run, tfmot QAT as the peer.

    python benchmarks/bench_quantization.py --pretrain-epochs 4 --epochs 4

Protocol: one float model is pre-trained for ``--pretrain-epochs`` (Adam 1e-3, batch 128).
Rows that keep the architecture start from it and train ``--epochs`` more: float (exported
as float32 and as post-training int8: the PTQ baseline), QAT, weight clustering (16 centroids).
Pruned 90% + PQAT prunes for ``--epochs`` (PolynomialDecay over 60% of the steps) and then
runs sparsity-preserving QAT for ``--epochs``. Binary, ternary and hashed models have other
layers, so they train from scratch for ``--pretrain-epochs + --epochs`` (the same budget).
Accuracy is measured in Keras and on LiteRT (int8 file); latencies are one interleaved LiteRT
run at 1 thread. "packed / DC size": bit-packed weights (binary, ternary), float32 real
parameters (hashed), Deep Compression estimate (pruned and clustered rows).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import harness  # noqa: E402


def lenet_variant(kind: str, seed: int = 0, compression: float | None = None):
    import keras

    from tfcompress.layers import (
        BinaryConv2D,
        BinaryDense,
        HashedConv2D,
        HashedDense,
        TernaryConv2D,
        TernaryDense,
    )

    keras.utils.set_random_seed(seed)
    if kind == "binary":
        conv, dense, extra = BinaryConv2D, BinaryDense, {}
    elif kind == "ternary":
        conv, dense, extra = TernaryConv2D, TernaryDense, {}
    else:
        conv, dense, extra = HashedConv2D, HashedDense, {"compression": compression}
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        conv(20, 5, activation="relu", name="conv1", **extra),
        keras.layers.MaxPooling2D(2, name="pool1"),
        conv(50, 5, activation="relu", name="conv2", **extra),
        keras.layers.MaxPooling2D(2, name="pool2"),
        keras.layers.Flatten(name="flatten"),
        dense(500, activation="relu", name="fc1", **extra),
        dense(10, name="fc2", **extra),
    ], name=f"lenet5_caffe_{kind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images (smoke runs)")
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()

    import numpy as np

    import tfcompress
    from tfcompress.callbacks import UpdatePruning
    from tfcompress.clustering import deep_compression_size
    from tfcompress.export import evaluate, to_tflite
    from tfcompress.layers.hashed import hashed_report
    from tfcompress.packing import weight_bits_report
    from tfcompress.schedules import PolynomialDecay

    data = common.load_data(args.limit)
    steps = int(np.ceil(len(data.x_train) / args.batch_size)) * args.epochs
    dense = common.compile_model(common.lenet())
    dense.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.pretrain_epochs, verbose=2)
    pretrained = dense.get_weights()

    def fresh():
        model = common.lenet()
        model.set_weights(pretrained)
        return model

    def fit(model, epochs, callbacks=None):
        common.compile_model(model)
        return common.timed_fit(model, data, epochs, args.batch_size, callbacks)

    rows: list[dict] = []
    float_model = fresh()
    seconds = fit(float_model, args.epochs)
    float_path = common._OUT / "float32.tflite"
    float_export = to_tflite(float_model, float_path, None)
    rows.append({"model": "float32", "keras accuracy": round(common.keras_accuracy(float_model, data), 4),
                 "int8 accuracy (LiteRT)": round(evaluate(float_path, data.x_test, data.y_test).accuracy, 4),
                 "size (bytes)": float_export.size_bytes, "gzip (bytes)": float_export.gzip_size_bytes,
                 "s/epoch": round(seconds, 2), "_path": str(float_path), "note": "float32 TFLite"})
    ptq = common.export_row("PTQ int8", float_model, data, **{"s/epoch": round(seconds, 2)})
    rows.append(ptq)

    qat = tfcompress.quantize(fresh())
    seconds = fit(qat, args.epochs)
    rows.append(common.export_row("QAT int8", qat, data, **{"s/epoch": round(seconds, 2)}))

    schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=int(0.6 * steps), frequency=100)
    pruned = tfcompress.prune(fresh(), schedule=schedule)
    fit(pruned, args.epochs, [UpdatePruning()])
    plain = tfcompress.strip(pruned)
    pqat = tfcompress.quantize(plain, preserve_sparsity=True)
    seconds = fit(pqat, args.epochs)
    zeros_keras = sum(int((w == 0).sum()) for layer in plain.layers for w in layer.get_weights() if w.ndim > 1)
    rows.append(common.export_row("pruned 90% + PQAT int8", pqat, data, **{
        "s/epoch": round(seconds, 2), "packed / DC size (bytes)": deep_compression_size(plain).total_bytes,
        "note": f"{zeros_keras:,} zero weights in the pruned Keras kernels"}))

    for kind in ("binary", "ternary"):
        model = lenet_variant(kind)
        seconds = fit(model, args.pretrain_epochs + args.epochs)
        bits = weight_bits_report(model)
        rows.append(common.export_row(f"{kind} (weights)", model, data, **{
            "s/epoch": round(seconds, 2), "packed / DC size (bytes)": bits.packed_bytes}))

    for compression, label in ((1 / 8, "1/8"), (1 / 64, "1/64")):
        model = lenet_variant("hashed", compression=compression)
        seconds = fit(model, args.pretrain_epochs + args.epochs)
        report = hashed_report(model)
        rows.append(common.export_row(f"hashed {label}", model, data, **{
            "s/epoch": round(seconds, 2), "packed / DC size (bytes)": report.float32_bytes,
            "note": f"{report.real_params:,} real parameters"}))

    clustered = tfcompress.cluster(fresh(), n_clusters=16)
    seconds = fit(clustered, args.epochs)
    rows.append(common.export_row("clustered 16", tfcompress.strip_clustering(clustered), data, **{
        "s/epoch": round(seconds, 2), "packed / DC size (bytes)": deep_compression_size(clustered).total_bytes}))

    if not args.skip_peer:
        from peer_tfmot import run_peer

        from tfcompress.export.tflite_file import load_tflite

        peer = run_peer("qat", data, str(common._OUT / "tfmot_qat.tflite"), pretrain_epochs=args.pretrain_epochs,
                        epochs=args.epochs, batch_size=args.batch_size)
        parsed = load_tflite(peer["path"])
        rows.append({"model": f"tfmot quantize_model (tf_keras, tfmot {peer['tfmot']})",
                     "keras accuracy": round(peer["keras_accuracy"], 4),
                     "int8 accuracy (LiteRT)": round(peer["int8_accuracy"], 4),
                     "int8 size (bytes)": parsed.size_bytes, "int8 gzip (bytes)": parsed.gzip_size_bytes,
                     "s/epoch": round(peer["seconds_per_epoch"], 2), "_path": peer["path"]})

    for row in rows:
        row.setdefault("size (bytes)", row.get("int8 size (bytes)"))
        row.setdefault("gzip (bytes)", row.get("int8 gzip (bytes)"))
    common.add_latency(rows, runs=args.runs)
    columns = ["model", "keras accuracy", "int8 accuracy (LiteRT)", "size (bytes)", "gzip (bytes)",
               "packed / DC size (bytes)", "int8 zero weights", "p50 ms (1 thread)", "latency vs first", "s/epoch",
               "note"]
    by = {r["model"]: r for r in rows}
    float_acc = by["float32"]["keras accuracy"]
    notes = [
        f"{args.pretrain_epochs} float pre-training epochs, then {args.epochs} per row (Adam 1e-3, batch "
        f"{args.batch_size}); binary / ternary / hashed train {args.pretrain_epochs + args.epochs} epochs from scratch.",
        "Points vs float Keras accuracy (LiteRT int8): " + ", ".join(
            f"{r['model']} {100 * (r['int8 accuracy (LiteRT)'] - float_acc):+.2f}" for r in rows[1:]) + ".",
        f"QAT - PTQ on LiteRT: {100 * (by['QAT int8']['int8 accuracy (LiteRT)'] - ptq['int8 accuracy (LiteRT)']):+.2f} points.",
    ]
    harness.record("05_quantization_lenet5_fashion_mnist", "Quantization: LeNet-5-Caffe on Fashion-MNIST",
                   columns, common.public(rows), notes,
                   extra={"pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs})
    print(harness.table(columns, rows))
    print("\n".join(notes))


if __name__ == "__main__":
    main()

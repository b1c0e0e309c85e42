"""Quantization benchmark (issue 5): LeNet-5-Caffe on Fashion-MNIST, one run, tfmot QAT as the peer.

    python benchmarks/bench_quantization.py --pretrain-epochs 4 --epochs 4

Protocol: one float model is pre-trained for ``--pretrain-epochs`` (Adam 1e-3, batch 128).
Rows that keep the architecture start from it and train ``--epochs`` more: float (exported
as float32 and as post-training int8: the PTQ baseline), QAT, weight clustering (16 centroids).
Pruned 90% + PQAT prunes for ``--epochs`` (PolynomialDecay over 60% of the steps) and then
runs sparsity-preserving QAT for ``--epochs``. Binary, ternary and hashed models have other
layers, so they train from scratch for ``--pretrain-epochs + --epochs`` (the same budget); the
hashed rows are also trained, with the same budget, by knowledge distillation from the float row
(``tfcompress.distillation.Distiller``, temperature ``--distill``, alpha 0.1): HashedNets'
"HashNet_DK" (Chen et al. 2015, experiments).
Accuracy is measured in Keras and on LiteRT (int8 file); latencies are one interleaved LiteRT
run at 1 thread. "packed / DC size": bit-packed weights (binary, ternary), float32 real
parameters (hashed), Deep Compression estimate (pruned and clustered rows). "bits per weight":
what one kernel weight carries: 32 (float), 8 (int8 rows), log2(levels) from
``tfcompress.packing.weight_bits_report`` (binary 1, ternary log2 3), 32 * real / virtual
parameters (hashed), log2(centroids) (clustered); for the Larq peer, log2 of the distinct int8
values per output channel of its exported kernels.

Peers (tf_keras, in a subprocess, see peer_tfmot.py): tfmot ``quantize_model`` for the QAT row,
Larq (QuantConv2D / QuantDense, ste_sign + weight_clip) for the binary row, same model, epochs
and optimizer. When larq cannot be installed beside this TensorFlow / tf_keras / NumPy, its row
says why (measured with ``pip install --dry-run larq``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import harness  # noqa: E402
import numpy as np  # noqa: E402

HASHED_LAYERS = {"all": ("conv1", "conv2", "fc1", "fc2"), "fc1": ("fc1",)}


def lenet_variant(kind: str, seed: int = 0, compression: float | None = None, hashed: str = "all"):
    """LeNet-5-Caffe with binary, ternary or hashed layers.

    ``hashed="fc1"`` (hashed only): only the 400,000-weight fully connected layer fc1 is hashed,
    harder, so that the whole network still stores ``compression`` of its virtual weights; the
    convolutions and the logits layer stay ordinary. HashedNets (Chen et al. 2015) hash fully
    connected layers; a 500-weight first convolution hashed 8x keeps 63 weights for 20 filters.
    """
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
    names = ("conv1", "conv2", "fc1", "fc2")
    if kind == "binary":
        layer_kinds = dict.fromkeys(names, (BinaryConv2D, BinaryDense, {}))
    elif kind == "ternary":
        layer_kinds = dict.fromkeys(names, (TernaryConv2D, TernaryDense, {}))
    else:
        chosen = HASHED_LAYERS[hashed]
        kernels = {"conv1": 5 * 5 * 20, "conv2": 5 * 5 * 20 * 50, "fc1": 800 * 500, "fc2": 500 * 10}
        if len(chosen) == len(names):  # every layer at `compression` itself (the uniform HashedNets row)
            share = compression
        else:
            budget = compression * sum(kernels.values()) - sum(v for k, v in kernels.items() if k not in chosen)
            # ceil() in the layers adds at most one weight per hashed layer: stay at or under the budget
            share = (budget - len(chosen)) / sum(kernels[k] for k in chosen)
        plain = (keras.layers.Conv2D, keras.layers.Dense, {})
        layer_kinds = {k: (HashedConv2D, HashedDense, {"compression": share}) if k in chosen else plain
                       for k in names}

    def make(name: str, filters_or_units: int, **kwargs):
        conv, dense, extra = layer_kinds[name]
        layer = conv if name.startswith("conv") else dense
        args = (filters_or_units, 5) if name.startswith("conv") else (filters_or_units,)
        return layer(*args, name=name, **kwargs, **extra)

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        make("conv1", 20, activation="relu"),
        keras.layers.MaxPooling2D(2, name="pool1"),
        make("conv2", 50, activation="relu"),
        keras.layers.MaxPooling2D(2, name="pool2"),
        keras.layers.Flatten(name="flatten"),
        make("fc1", 500, activation="relu"),
        make("fc2", 10),
    ], name=f"lenet5_caffe_{kind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images (smoke runs)")
    parser.add_argument("--distill", type=float, default=4.0, metavar="T",
                        help="temperature of the hashed rows trained by distillation from the float row "
                             "(HashNet_DK); 0 leaves those rows out")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--larq-dir", default=None,
                        help="a folder holding larq installed with pip's --no-deps --target (larq pins numpy<2)")
    args = parser.parse_args()

    import tfcompress
    from tfcompress.callbacks import UpdatePruning
    from tfcompress.clustering import deep_compression_size
    from tfcompress.distillation import Distiller
    from tfcompress.export import evaluate, to_tflite
    from tfcompress.export.tflite_file import load_tflite
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
                 "bits per weight": 32, "s/epoch": round(seconds, 2), "_path": str(float_path),
                 "note": "float32 TFLite"})
    ptq = common.export_row("PTQ int8", float_model, data, **{"s/epoch": round(seconds, 2), "bits per weight": 8})
    rows.append(ptq)

    qat = tfcompress.quantize(fresh())
    seconds = fit(qat, args.epochs)
    rows.append(common.export_row("QAT int8", qat, data, **{"s/epoch": round(seconds, 2), "bits per weight": 8}))

    schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=int(0.6 * steps), frequency=100)
    pruned = tfcompress.prune(fresh(), schedule=schedule)
    fit(pruned, args.epochs, [UpdatePruning()])
    plain = tfcompress.strip(pruned)
    pqat = tfcompress.quantize(plain, preserve_sparsity=True)
    seconds = fit(pqat, args.epochs)
    zeros_keras = sum(int((w == 0).sum()) for layer in plain.layers for w in layer.get_weights() if w.ndim > 1)
    row = common.export_row("pruned 90% + PQAT int8", pqat, data, **{
        "s/epoch": round(seconds, 2), "packed / DC size (bytes)": deep_compression_size(plain).total_bytes,
        "bits per weight": 8})
    zeros_int8 = kernel_zeros(load_tflite(row["_path"]))
    row["note"] = (f"{zeros_keras:,} zero weights in the pruned Keras kernels, {zeros_int8:,} in the int8 file's "
                   f"kernels ({zeros_int8 - zeros_keras:+,d})")
    rows.append(row)

    for kind in ("binary", "ternary"):
        model = lenet_variant(kind)
        seconds = fit(model, args.pretrain_epochs + args.epochs)
        bits = weight_bits_report(model)
        rows.append(common.export_row(f"{kind} (weights)", model, data, **{
            "s/epoch": round(seconds, 2), "packed / DC size (bytes)": bits.packed_bytes,
            "bits per weight": round(bits.bits_per_weight, 3)}))

    hashed_variants = [(1 / 8, "1/8", "all"), (1 / 8, "1/8, fc1 only", "fc1"), (1 / 64, "1/64", "all")]
    hashed_variants = [(*v, False) for v in hashed_variants] + [(*v, True) for v in hashed_variants if args.distill]
    for compression, label, hashed, distilled in hashed_variants:
        model = lenet_variant("hashed", compression=compression, hashed=hashed)
        if distilled:
            # HashNet_DK (Chen et al. 2015, experiments): the same training on the float model's soft targets
            distiller = Distiller(model, float_model, temperature=args.distill, alpha=0.1)
            seconds = fit(distiller, args.pretrain_epochs + args.epochs)
            common.compile_model(model)  # the student alone, for its Keras accuracy
            label += f" + distillation (HashNet_DK, T={args.distill:g})"
        else:
            seconds = fit(model, args.pretrain_epochs + args.epochs)
        report = hashed_report(model)
        rows.append(common.export_row(f"hashed {label}", model, data, **{
            "s/epoch": round(seconds, 2), "packed / DC size (bytes)": report.float32_bytes,
            "bits per weight": round(32 * report.real_params / report.virtual_params, 3),
            "note": f"{report.real_params:,} real parameters of {report.virtual_params:,} "
                    f"({report.real_params / report.virtual_params:.4f})"}))

    n_clusters = 16
    clustered = tfcompress.cluster(fresh(), n_clusters=n_clusters)
    seconds = fit(clustered, args.epochs)
    rows.append(common.export_row(f"clustered {n_clusters}", tfcompress.strip_clustering(clustered), data, **{
        "s/epoch": round(seconds, 2), "packed / DC size (bytes)": deep_compression_size(clustered).total_bytes,
        "bits per weight": math.log2(n_clusters)}))

    if not args.skip_peer:
        from peer_tfmot import run_peer

        peer = run_peer("qat", data, str(common._OUT / "tfmot_qat.tflite"), pretrain_epochs=args.pretrain_epochs,
                        epochs=args.epochs, batch_size=args.batch_size)
        parsed = load_tflite(peer["path"])
        rows.append({"model": f"tfmot quantize_model (tf_keras, tfmot {peer['tfmot']})",
                     "keras accuracy": round(peer["keras_accuracy"], 4),
                     "int8 accuracy (LiteRT)": round(peer["int8_accuracy"], 4),
                     "int8 size (bytes)": parsed.size_bytes, "int8 gzip (bytes)": parsed.gzip_size_bytes,
                     "int8 zero weights": parsed.weight_stats()["weight_zeros"], "bits per weight": 8,
                     "s/epoch": round(peer["seconds_per_epoch"], 2), "_path": peer["path"]})
        rows.append(larq_row(run_peer, data, args))

    for row in rows:
        row.setdefault("size (bytes)", row.get("int8 size (bytes)"))
        row.setdefault("gzip (bytes)", row.get("int8 gzip (bytes)"))
    common.add_latency(rows, runs=args.runs)
    columns = ["model", "keras accuracy", "int8 accuracy (LiteRT)", "size (bytes)", "gzip (bytes)",
               "packed / DC size (bytes)", "bits per weight", "int8 zero weights", "p50 ms (1 thread)",
               "latency vs first", "s/epoch", "note"]
    by = {r["model"]: r for r in rows}
    float_acc = by["float32"]["keras accuracy"]
    notes = [
        f"{args.pretrain_epochs} float pre-training epochs, then {args.epochs} per row (Adam 1e-3, batch "
        f"{args.batch_size}); binary / ternary / hashed train {args.pretrain_epochs + args.epochs} epochs from scratch"
        + (f"; the '+ distillation' hashed rows train those epochs on the float32 row's soft targets (temperature "
           f"{args.distill:g}, alpha 0.1: 0.1 x label loss + 0.9 x T^2 x KL)." if args.distill else "."),
        "Hashed '1/8, fc1 only': HashedNets hash fully connected layers (Chen et al. 2015); only the 400,000-weight "
        "fc1 is hashed, harder, and conv1, conv2 and fc2 stay ordinary, so the network stores the same 1/8 of its "
        "431,080 weights as the uniformly hashed row (real parameters in the note).",
        "Points vs float Keras accuracy (LiteRT int8): " + ", ".join(
            f"{r['model']} {100 * (r['int8 accuracy (LiteRT)'] - float_acc):+.2f}" for r in rows[1:]
            if r.get("int8 accuracy (LiteRT)") is not None) + ".",
        f"QAT - PTQ on LiteRT: {100 * (by['QAT int8']['int8 accuracy (LiteRT)'] - ptq['int8 accuracy (LiteRT)']):+.2f} points.",
    ]
    harness.record("05_quantization_lenet5_fashion_mnist", "Quantization: LeNet-5-Caffe on Fashion-MNIST",
                   columns, common.public(rows), notes,
                   extra={"pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs})
    print(harness.table(columns, rows))
    print("\n".join(notes))


def kernel_zeros(parsed) -> int:
    """Zeros in the int8 kernels (constant INT8 tensors of rank >= 2) of a parsed .tflite."""
    return sum(int((parsed.constant_values(t) == 0).sum()) for t in parsed.tensors[0]
               if t.constant and t.dtype == "INT8" and len(t.shape) >= 2)


def kernel_bits(parsed) -> float:
    """log2 of the distinct int8 values per output channel of each kernel, weighted by kernel size."""
    bits = count = 0.0
    for tensor in parsed.tensors[0]:
        if tensor.constant and tensor.dtype == "INT8" and len(tensor.shape) >= 2:
            values = parsed.constant_values(tensor)
            levels = max(len(np.unique(channel)) for channel in values.reshape(values.shape[0], -1))
            bits += values.size * math.log2(max(levels, 2))
            count += values.size
    return bits / count if count else 8.0


def larq_row(run_peer, data, args) -> dict:
    """The Larq peer of the binary row, or a row saying why it did not run."""
    import os

    from tfcompress.export.tflite_file import load_tflite

    name = "Larq QuantConv2D / QuantDense, magnitude_aware_sign + weight_clip (tf_keras)"
    how = ""
    if args.larq_dir:
        # larq pins numpy<2; installed with --no-deps into its own folder, it runs beside numpy 2
        if not Path(args.larq_dir).is_dir():
            return {"model": name, "note": f"not run: --larq-dir {args.larq_dir} does not exist "
                    f"(pip install --no-deps --target {args.larq_dir} larq)"}
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(args.larq_dir).resolve()), os.environ.get("PYTHONPATH")) if p)
        how = (f"; larq installed with `pip install --no-deps --target {args.larq_dir} larq` (its "
               "numpy<2 pin is not met: it ran with this numpy)")
    try:
        peer = run_peer("larq", data, str(common._OUT / "larq_binary.tflite"), pretrain_epochs=args.pretrain_epochs,
                        epochs=args.epochs, batch_size=args.batch_size)
    except RuntimeError as exc:  # larq imported but failed to train or convert: say where
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return {"model": name, "note": f"not run: the larq peer failed: {lines[-1] if lines else exc}"}
    if "unavailable" in peer:
        return {"model": name, "note": peer["unavailable"]}
    parsed = load_tflite(peer["path"])
    return {"model": f"{name}, larq {peer['larq']}", "keras accuracy": round(peer["keras_accuracy"], 4),
            "int8 accuracy (LiteRT)": round(peer["int8_accuracy"], 4), "int8 size (bytes)": parsed.size_bytes,
            "int8 gzip (bytes)": parsed.gzip_size_bytes, "int8 zero weights": parsed.weight_stats()["weight_zeros"],
            "bits per weight": round(kernel_bits(parsed), 3), "s/epoch": round(peer["seconds_per_epoch"], 2),
            "_path": peer["path"], "note": f"{peer['epochs']} epochs from scratch, as the binary row; both scale sign(W) by the "
                    f"per-channel mean |W|{how}"}


if __name__ == "__main__":
    main()

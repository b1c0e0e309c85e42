"""LeNet-5-Caffe on Fashion-MNIST: Keras float vs TFLite float32 / dynamic-range / full int8.

Columns: test accuracy (TFLite files measured on LiteRT), file and gzip size,
LiteRT p50 latency at 1 thread (all files benchmarked interleaved in this run,
ratio to float32), and the TFLite Micro tensor arena measured on the real TFLM
interpreter.

    python benchmarks/bench_export.py --epochs 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=1000, help="latency runs per file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras

    from tfcompress.datasets import fashion_mnist
    from tfcompress.errors import TfcompressError
    from tfcompress.export import benchmark, evaluate, to_tflite
    from tfcompress.export.micro import to_micro
    from tfcompress.models import lenet5_caffe

    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = fashion_mnist()
    model = lenet5_caffe()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    train_seconds = time.perf_counter() - started
    keras_accuracy = float(model.evaluate(x_test, y_test, verbose=0, batch_size=1000)[1])

    out = Path(tempfile.mkdtemp(prefix="tfcompress_bench_export_"))
    modes = {"TFLite float32": None, "TFLite dynamic-range": "dynamic", "TFLite full int8": "int8"}
    reports, paths = {}, {}
    for label, quantization in modes.items():
        path = out / f"lenet5_{quantization or 'float32'}.tflite"
        reports[label] = to_tflite(model, path, quantization, representative_data=x_train[:500])
        paths[label] = path

    bench = benchmark(list(paths.values()), runs=args.runs, warmup=100, threads=1)
    latency = {label: r for label, r in zip(paths, bench.results, strict=True)}
    # The same files on LiteRT's builtin kernels (no XNNPACK), also interleaved.
    builtin = benchmark(list(paths.values()), runs=args.runs, warmup=100, threads=1, delegate="none")
    latency_builtin = {label: r for label, r in zip(paths, builtin.results, strict=True)}

    rows = [
        {
            "model": "Keras float32",
            "test accuracy": round(keras_accuracy, 4),
            "size (bytes)": None,
            "gzip (bytes)": None,
            "p50 ms (1 thread)": None,
            "latency vs float32": None,
            "delegate": None,
            "p50 ms builtin kernels": None,
            "builtin vs float32": None,
            "TFLM arena (bytes)": None,
            "TFLM vs LiteRT": None,
        }
    ]
    for label, path in paths.items():
        accuracy = evaluate(path, x_test, y_test).accuracy
        try:
            micro = to_micro(path, out / f"micro_{path.stem}", name="lenet5")
            arena = micro.arena_bytes
            # TFLM's outputs against LiteRT's reference kernels on the same inputs
            tflm_check = (f"identical ({micro.samples_compared} inputs)" if micro.identical else
                          f"max {micro.max_diff_reference:g} {micro.diff_unit}")
        except TfcompressError as exc:  # hybrid (dynamic-range) kernels do not exist in TFLM
            arena, tflm_check = None, "not supported by TFLM"
            print(f"TFLM: {label}: {exc}", file=sys.stderr)
        rows.append(
            {
                "model": label,
                "test accuracy": round(accuracy, 4),
                "size (bytes)": reports[label].size_bytes,
                "gzip (bytes)": reports[label].gzip_size_bytes,
                "p50 ms (1 thread)": round(latency[label].p50_ms, 4),
                "latency vs float32": round(latency[label].ratio_to_first, 3),
                "delegate": latency[label].runtime.delegate,
                "p50 ms builtin kernels": round(latency_builtin[label].p50_ms, 4),
                "builtin vs float32": round(latency_builtin[label].ratio_to_first, 3),
                "TFLM arena (bytes)": arena,
                "TFLM vs LiteRT": tflm_check,
            }
        )
    int8 = rows[-1]
    float32 = rows[1]
    notes = [
        f"LeNet-5-Caffe (conv 20 5x5, pool, conv 50 5x5, pool, dense 500, dense 10), {args.epochs} epochs of Adam 1e-3, "
        f"batch {args.batch_size}, training {train_seconds:.0f} s on this machine.",
        f"int8 accuracy - Keras accuracy = {100 * (int8['test accuracy'] - keras_accuracy):+.2f} points; "
        f"int8 file = {int8['size (bytes)'] / float32['size (bytes)']:.3f}x the float32 file.",
        f"int8 p50 / float32 p50 = {int8['latency vs float32']:.3f} ({args.runs} interleaved runs each after 100 warm-up, "
        f"{int8['delegate']}); on LiteRT's builtin kernels (--delegate none) the ratio is "
        f"{int8['builtin vs float32']:.3f}.",
        "Calibration: 500 training images. Accuracy of TFLite files measured on LiteRT over the 10,000 test images.",
    ]
    harness.record(
        "01_export_lenet5_fashion_mnist",
        "Export: LeNet-5-Caffe on Fashion-MNIST, float vs int8",
        list(rows[0].keys()),
        rows,
        notes,
        extra={"train_seconds": train_seconds, "epochs": args.epochs},
    )
    print(harness.table(list(rows[0].keys()), rows))
    print("\n".join(notes))


if __name__ == "__main__":
    main()

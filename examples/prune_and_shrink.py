"""Channel-prune LeNet-5-Caffe on Fashion-MNIST, shrink it, export int8 and compare latency.

    python examples/prune_and_shrink.py [--epochs 3] [--sparsity 0.6] [--out build/]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import keras

import tfcompress
from tfcompress.export import benchmark, evaluate, to_tflite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.6)
    parser.add_argument("--out", default="build")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N training and test images "
                        "(a quick check that the flow runs; 0: all)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    (x, y), (x_test, y_test) = tfcompress.datasets.fashion_mnist()
    if args.limit:
        x, y, x_test, y_test = x[:args.limit], y[:args.limit], x_test[:args.limit], y_test[:args.limit]
    model = tfcompress.models.lenet5_caffe()
    model.compile("adam", loss, metrics=["accuracy"])
    model.fit(x, y, epochs=args.epochs, batch_size=128, verbose=2)

    steps = math.ceil(len(x) / 128) * args.epochs
    schedule = tfcompress.schedules.PolynomialDecay(0.0, args.sparsity, begin_step=0, end_step=steps // 2)
    pruned = tfcompress.prune(model, schedule=schedule, granularity="channel")
    pruned.compile("adam", loss, metrics=["accuracy"])
    pruned.fit(x, y, epochs=args.epochs, batch_size=128, verbose=2, callbacks=[tfcompress.callbacks.UpdatePruning()])
    small, report = tfcompress.shrink(pruned, return_report=True)
    print(report.text())

    to_tflite(model, out / "dense.tflite", "int8", representative_data=x[:500])
    to_tflite(small, out / "small.tflite", "int8", representative_data=x[:500])
    for name in ("dense", "small"):
        print(name, "LiteRT int8 accuracy", evaluate(out / f"{name}.tflite", x_test, y_test).accuracy)
    print(benchmark([out / "dense.tflite", out / "small.tflite"], runs=500, threads=1).text())


if __name__ == "__main__":
    main()

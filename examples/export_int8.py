"""Train LeNet-5-Caffe, export it to full int8, verify it on LiteRT and TFLite Micro, check the Edge TPU.

    python examples/export_int8.py [--epochs 3] [--out build/]

Uses Fashion-MNIST from /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist)
or $TFCOMPRESS_DATA.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras

import tfcompress
from tfcompress.export import agreement, edgetpu_report, evaluate, to_micro, to_tflite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="build")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N training and test images "
                        "(a quick check that the flow runs; 0: all)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    (x_train, y_train), (x_test, y_test) = tfcompress.datasets.fashion_mnist()
    if args.limit:
        x_train, y_train, x_test, y_test = x_train[:args.limit], y_train[:args.limit], x_test[:args.limit], y_test[:args.limit]
    model = tfcompress.models.lenet5_caffe()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=128, verbose=2)

    report = to_tflite(model, out / "lenet.tflite", "int8", representative_data=x_train[:500])
    print(report.text())
    print("LiteRT int8 accuracy:", evaluate(out / "lenet.tflite", x_test, y_test).accuracy)
    print("top-1 agreement with Keras:", agreement(model, out / "lenet.tflite", x_test[:1000]).top1_agreement)
    print(to_micro(out / "lenet.tflite", out / "firmware", name="lenet").text())
    print(edgetpu_report(out / "lenet.tflite").text())
    print(tfcompress.metrics.summarize(model).table())


if __name__ == "__main__":
    main()

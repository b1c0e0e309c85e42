"""Quantization-aware training of LeNet-5-Caffe and an int8 export from the learned ranges.

    python examples/qat.py [--epochs 3] [--out build/]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras

import tfcompress
from tfcompress.export import agreement, evaluate, to_micro, to_tflite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
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

    qat = tfcompress.quantize(model)
    qat.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    qat.fit(x, y, epochs=1, batch_size=128, verbose=2)
    print(to_tflite(qat, out / "qat.tflite", "int8").text())   # no representative data
    print("LiteRT int8 accuracy", evaluate(out / "qat.tflite", x_test, y_test).accuracy)
    print("top-1 agreement with the QAT model", agreement(qat, out / "qat.tflite", x_test[:1000]).top1_agreement)
    print(to_micro(out / "qat.tflite", out / "firmware_qat", name="lenet_qat").text())


if __name__ == "__main__":
    main()

"""Structured Bayesian pruning (SBP by default) of LeNet-5-Caffe, then shrink and int8 export.

    python examples/bayesian_pruning.py [--method sbp] [--epochs 5] [--beta 1.0] [--out build/]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras

import tfcompress
from tfcompress import bayesian
from tfcompress.export import evaluate, to_tflite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="sbp", choices=bayesian.METHODS)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--beta", type=float, default=1.0, help="KL weight after warm-up (1 = ELBO)")
    parser.add_argument("--out", default="build")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    (x, y), (x_test, y_test) = tfcompress.datasets.fashion_mnist()
    model = tfcompress.models.lenet5_caffe()
    model.compile("adam", loss, ["accuracy"])
    model.fit(x, y, epochs=3, batch_size=128, verbose=2)

    bayes = bayesian.convert(model, args.method, dataset_size=len(x))
    bayes.compile(keras.optimizers.Adam(1e-3), loss, ["accuracy"])
    bayes.fit(x, y, epochs=args.epochs, batch_size=128, verbose=2,
              callbacks=[tfcompress.callbacks.KLAnnealing(warmup_epochs=max(1, args.epochs // 2), max_weight=args.beta)])
    for name, info in bayesian.structure(bayes).items():
        print(f"{name}: {info['kept']} of {info['total']} channels kept")
    small, report = tfcompress.shrink(bayes, return_report=True)
    print(report.text())
    to_tflite(small, out / "bayes.tflite", "int8", representative_data=x[:500])
    print("LiteRT int8 accuracy", evaluate(out / "bayes.tflite", x_test, y_test).accuracy)


if __name__ == "__main__":
    main()

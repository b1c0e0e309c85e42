"""Structured Bayesian pruning (SBP by default) of LeNet-5-Caffe, then shrink and int8 export.

    python examples/bayesian_pruning.py [--method sbp] [--epochs 5] [--beta 1.0] [--out build/]
    python examples/bayesian_pruning.py --keep conv1=6,conv2=13,fc1=55   # a chosen size, reached gradually
    python examples/bayesian_pruning.py --keep conv1=6,conv2=13,fc1=55 --finetune 60   # then distilled

Without ``--keep`` each method's own rule decides what stays (``bayesian.structure``). With it,
``PosteriorPruning`` cuts to that sub-architecture during the first epochs, the channels of lowest
posterior importance first, so the last epochs train the model at its final size. ``--finetune N``
then distils the small model from the dense one for N epochs on left-right flips that both see
(the recipe of the README's Bayesian table).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import tensorflow as tf

import tfcompress
from tfcompress import bayesian
from tfcompress.distillation import Distiller
from tfcompress.export import evaluate, to_tflite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="sbp", choices=bayesian.METHODS)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--beta", type=float, default=1.0, help="KL weight after warm-up (1 = ELBO)")
    parser.add_argument("--keep", default="", help="channels to keep per layer, e.g. conv1=6,conv2=13,fc1=55")
    parser.add_argument("--finetune", type=int, default=0,
                        help="epochs of distillation from the dense model after the cut (0: none)")
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
    steps_per_epoch = -(-len(x) // 128)
    model = tfcompress.models.lenet5_caffe()
    model.compile("adam", loss, metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=128, verbose=2)

    bayes = bayesian.convert(model, args.method, dataset_size=len(x))
    bayes.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    callbacks = [tfcompress.callbacks.KLAnnealing(warmup_epochs=max(1, args.epochs // 2), max_weight=args.beta)]
    if args.keep:
        keep = {name: int(k) for name, k in (item.split("=") for item in args.keep.split(","))}
        # the cut ends two thirds of the way: the last third trains the model at its final size
        end_step = 2 * steps_per_epoch * args.epochs // 3
        callbacks.append(tfcompress.callbacks.PosteriorPruning(keep, begin_step=0, end_step=end_step, verbose=1))
    bayes.fit(x, y, epochs=args.epochs, batch_size=128, verbose=2, callbacks=callbacks)
    for name, info in bayesian.structure(bayes).items():
        print(f"{name}: {info['kept']} of {info['total']} channels kept")
    small, report = tfcompress.shrink(bayes, return_report=True)
    print(report.text())
    if args.finetune:
        # teacher and student see the same flipped views (Beyer et al. 2022): on the plain images a
        # long fine-tuning overfits the teacher's soft targets
        flip = keras.layers.RandomFlip("horizontal")
        views = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).batch(128)
                 .map(lambda images, labels: (flip(images, training=True), labels)))
        rate = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=steps_per_epoch * args.finetune)
        distiller = Distiller(small, model, temperature=4.0, alpha=0.1)
        distiller.compile(keras.optimizers.Adam(rate), loss, metrics=["accuracy"])
        distiller.fit(views, epochs=args.finetune, verbose=2)
    to_tflite(small, out / "bayes.tflite", "int8", representative_data=x[:500])
    print("LiteRT int8 accuracy", evaluate(out / "bayes.tflite", x_test, y_test).accuracy)


if __name__ == "__main__":
    main()

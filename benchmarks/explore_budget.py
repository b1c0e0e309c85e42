"""Train sub-architectures of LeNet-5-Caffe from scratch at a compression budget (a tuning aid, issue 4).

    python benchmarks/explore_budget.py 6-12-60 6-13-55 4-24-28 --epochs 15

Each ``a-b-c`` is LeNet-5-Caffe with ``a`` and ``b`` filters in its convolutions and ``c`` units in
fc1, trained from a fresh initialisation by distillation (``common.fine_tune``: Hinton et al. 2015,
temperature ``--temperature``, Adam ``--lr`` along a cosine) from the dense model trained
``--teacher-epochs`` (cached in ``benchmarks/out/explore``, shared with explore_bayesian.py).
It asks what accuracy a budget allows at all, whatever chose the channels: a Bayesian cut to the
same widths can then be read against it. Writes ``benchmarks/out/explore/budget_<specs>.json``
(parameters and MACs, their ratios to dense, Keras accuracy after every epoch); never touches
RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def lenet_widths(conv1: int, conv2: int, fc1: int, seed: int = 0):
    """LeNet-5-Caffe (``tfcompress.models.lenet5_caffe``) with other widths, freshly initialised."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(conv1, 5, activation="relu", name="conv1"),
        layers.MaxPooling2D(2, name="pool1"),
        layers.Conv2D(conv2, 5, activation="relu", name="conv2"),
        layers.MaxPooling2D(2, name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(fc1, activation="relu", name="fc1"),
        layers.Dense(10, name="logits"),
    ], name=f"lenet5_caffe_{conv1}_{conv2}_{fc1}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("widths", nargs="+", help="conv1-conv2-fc1, e.g. 6-12-60")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--teacher-epochs", type=int, default=25)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    try:
        specs = [tuple(int(w) for w in text.split("-")) for text in args.widths]
    except ValueError:
        specs = []
    if not specs or any(len(spec) != 3 or min(spec) < 1 for spec in specs):
        parser.error(f"widths must be three positive integers joined by '-', e.g. 6-12-60; got {args.widths}")

    import keras

    from tfcompress.metrics import summarize

    out = Path(__file__).resolve().parent / "out" / "explore"
    out.mkdir(parents=True, exist_ok=True)
    data = common.load_data()
    teacher = common.cached_dense_lenet(data, args.teacher_epochs, out)
    dense = summarize(teacher)
    result = {"command": " ".join(sys.argv), "teacher accuracy": round(common.keras_accuracy(teacher, data), 4),
              "dense params": dense.params, "dense MACs": dense.macs, "widths": {}}
    for spec in specs:
        model = common.compile_model(lenet_widths(*spec))
        summary = summarize(model)
        accuracies: list[float] = []

        class Accuracy(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None, model=model, accuracies=accuracies):
                accuracies.append(round(common.keras_accuracy(model, data), 4))

        started = time.perf_counter()
        common.fine_tune(model, data, args.epochs, teacher=teacher, temperature=args.temperature, cosine=True,
                         lr=args.lr, callbacks=[Accuracy()], verbose=0)
        row = {"params": summary.params, "MACs": summary.macs,
               "params ratio": round(dense.params / summary.params, 2),
               "MACs ratio": round(dense.macs / summary.macs, 2),
               "keras accuracy after each epoch": accuracies, "seconds": round(time.perf_counter() - started)}
        result["widths"]["-".join(map(str, spec))] = row
        print("-".join(map(str, spec)), json.dumps(row), flush=True)
    name = "budget_" + "_".join(args.widths) + f"_{args.epochs}ep.json"
    (out / name).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

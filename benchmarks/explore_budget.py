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

    from tfcompress._io import write_text_atomic
    from tfcompress.metrics import summarize

    out = common.EXPLORE_DIR
    out.mkdir(parents=True, exist_ok=True)
    data = common.load_data()
    teacher = common.cached_dense_lenet(data, args.teacher_epochs)
    dense = summarize(teacher)
    result = {"command": " ".join(sys.argv), "teacher accuracy": round(common.keras_accuracy(teacher, data), 4),
              "dense params": dense.params, "dense MACs": dense.macs, "widths": {}}
    for conv1, conv2, fc1 in specs:
        model = common.compile_model(common.lenet(conv1=conv1, conv2=conv2, fc1=fc1))
        summary = summarize(model)
        accuracies: list[float] = []
        started = time.perf_counter()
        common.fine_tune(model, data, args.epochs, teacher=teacher, temperature=args.temperature, cosine=True,
                         lr=args.lr, callbacks=[common.epoch_accuracies(model, data, accuracies)], verbose=0)
        row = {"params": summary.params, "MACs": summary.macs,
               "params ratio": round(dense.params / summary.params, 2),
               "MACs ratio": round(dense.macs / summary.macs, 2),
               "keras accuracy after each epoch": accuracies, "seconds": round(time.perf_counter() - started)}
        result["widths"][f"{conv1}-{conv2}-{fc1}"] = row
        print(f"{conv1}-{conv2}-{fc1}", json.dumps(row), flush=True)
    name = "budget_" + "_".join(args.widths) + f"_{args.epochs}ep.json"
    write_text_atomic(out / name, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

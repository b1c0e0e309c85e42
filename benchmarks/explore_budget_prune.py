"""Channel pruning to a budget against uniform channel pruning, on LeNet-5-Caffe / Fashion-MNIST (issue 22).

    python benchmarks/explore_budget_prune.py --epochs 4 --ramp-epochs 2

From the dense LeNet-5-Caffe trained ``--teacher-epochs`` (cached in ``benchmarks/out/explore``,
shared with the other explorations), each arm prunes channels and fine-tunes ``--epochs`` epochs
(Adam 1e-3 along a cosine, distilled from the dense model, ``common.fine_tune``):

* ``uniform``: every dependency group loses ``--sparsity`` of its channels (one shot);
* ``budget@uniform``: ``prune(model, budget=Budget(macs=<uniform's MACs>))``, one shot: the
  same MAC count, channel counts chosen by importance per unit cost (`tfcompress.pruning.budget`);
* ``budget 1/15 MACs, 1/60 params``: the issue's budget, ``Budget.fraction_of(dense, macs=1/15,
  params=1/60)``, reached gradually over the first ``--ramp-epochs`` (``BudgetSchedule``, cubic),
  by the budget API alone (no hand-chosen sub-architecture).

Every row: the shrunk model's ``model_cost`` (params, int8 weight bytes, MACs), whether the budget
is met, Keras accuracy before fine-tuning and after, and int8 accuracy on LiteRT
(``common.export_row``). Writes ``benchmarks/out/explore/budget_prune_<epochs>ep.json``; never
touches RESULTS.md.
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
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs of every arm")
    parser.add_argument("--ramp-epochs", type=int, default=2, help="epochs the gradual budget takes to be reached")
    parser.add_argument("--sparsity", type=float, default=0.5, help="uniform arm: channels removed per group")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="training images (all by default)")
    parser.add_argument("--arms", default="uniform,budget@uniform,budget-issue")
    parser.add_argument("--min-keep", type=float, default=0.02,
                        help="budget arms: the least fraction of its channels a dependency group keeps")
    args = parser.parse_args()

    import keras
    import numpy as np

    import tfcompress
    from tfcompress import Budget, model_cost
    from tfcompress._io import write_text_atomic
    from tfcompress.callbacks import UpdatePruning
    from tfcompress.pruning import BudgetSchedule, ConstantSparsity, prune, strip, update_masks

    out = common.EXPLORE_DIR
    out.mkdir(parents=True, exist_ok=True)
    data = common.load_data(args.limit)
    teacher = common.cached_dense_lenet(data, args.teacher_epochs)
    dense_cost = model_cost(teacher)
    result = {"command": " ".join(sys.argv), "dense": {**dense_cost.to_dict(),
              "keras accuracy": round(common.keras_accuracy(teacher, data), 4)}, "arms": {}}
    print("dense", dense_cost, result["dense"]["keras accuracy"], flush=True)
    steps_per_epoch = int(np.ceil(len(data.x_train) / 128))

    def clone():
        model = keras.models.clone_model(teacher)
        model.set_weights(teacher.get_weights())
        model.trainable = True  # the Distiller of a previous arm froze the teacher, and a clone copies that
        return model

    def finish(name, pruned, budget, callbacks=()):
        started = time.perf_counter()
        before = round(common.keras_accuracy(common.compile_model(strip(pruned)), data), 4)
        common.fine_tune(pruned, data, args.epochs, teacher=teacher, cosine=True, callbacks=list(callbacks), verbose=0)
        small = common.compile_model(tfcompress.shrink(strip(pruned)))
        cost = model_cost(small)
        row = common.export_row(name, small, data)
        row.pop("_path", None)
        row.update({"cost": cost.to_dict(), "budget": repr(budget),
                    "budget met": None if budget is None else budget.check(cost).met,
                    "keras accuracy before fine-tuning": before,
                    "MACs ratio": round(dense_cost.macs / cost.macs, 2),
                    "params ratio": round(dense_cost.params / cost.params, 2),
                    "structure": "-".join(str(layer.get_config().get("filters", layer.get_config().get("units")))
                                          for layer in small.layers if hasattr(layer, "kernel")),
                    "seconds": round(time.perf_counter() - started)})
        result["arms"][name] = row
        print(name, json.dumps(row), flush=True)
        return cost

    arms = args.arms.split(",")
    uniform_macs = None
    if "uniform" in arms or "budget@uniform" in arms:  # its MACs are the budget@uniform arm's budget
        uniform = prune(clone(), ConstantSparsity(args.sparsity, 0), "channel", criterion="l1", verbose=0)
        update_masks(uniform, 0)
        uniform_macs = model_cost(uniform, shrink=True).macs
        if "uniform" in arms:
            finish(f"uniform {args.sparsity:.0%}", uniform, None)
    if "budget@uniform" in arms:
        budget = Budget(macs=uniform_macs)
        finish("budget@uniform", prune(clone(), budget=budget, min_keep_fraction=args.min_keep, verbose=0), budget)
    if "budget-issue" in arms:
        budget = Budget.fraction_of(dense_cost, macs=1 / 15, params=1 / 60)
        schedule = BudgetSchedule(budget, 0, max(args.ramp_epochs * steps_per_epoch - 1, 0),
                                  frequency=max(steps_per_epoch // 10, 1))
        finish("budget 1/15 MACs, 1/60 params",
               prune(clone(), budget=schedule, min_keep_fraction=args.min_keep, verbose=0), budget,
               callbacks=[UpdatePruning()])
    name = f"budget_prune_{args.epochs}ep_keep{args.min_keep}.json"
    write_text_atomic(out / name, json.dumps(result, indent=1))
    print("wrote", out / name)


if __name__ == "__main__":
    main()

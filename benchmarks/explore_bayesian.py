"""Explore one Bayesian pruning setting on LeNet-5-Caffe / Fashion-MNIST (a tuning aid, issue 4).

    python benchmarks/explore_bayesian.py vcp --kl-max 30 --epochs 6 --finetune-epochs 4

Converts a dense model pre-trained for ``--pretrain-epochs`` (cached in ``benchmarks/out``),
trains it ``--epochs`` with the KL weight warmed up linearly over the first half to
``--kl-max``, prints the channels each Bayesian layer keeps after every epoch, then strips and
shrinks it and fine-tunes the small model ``--finetune-epochs`` (Keras accuracy after each;
``--distill T``: by distillation from the dense model at temperature T). The protocol is ``common.train_bayesian``, the one
``bench_bayesian.py`` runs (Dirichlet: prior 0.5, Adam 1e-2 on the switches alone); ``--int8``
adds both models' full-int8 accuracy on LiteRT.
It writes ``benchmarks/out/explore/<method>_<kl-max>.json`` and never touches RESULTS.md:
the table of record is ``bench_bayesian.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["vcp", "dirichlet", "sbp", "sparse_vd", "bc"])
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--kl-max", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-2 for dirichlet, else 1e-3")
    parser.add_argument("--tau", type=float, default=0.05, help="VCP")
    parser.add_argument("--theta", type=float, default=0.2, help="VCP")
    parser.add_argument("--distill", type=float, default=0.0, metavar="T",
                        help="fine-tune by distillation from the dense model at temperature T (0: labels only)")
    parser.add_argument("--cosine", action="store_true", help="fine-tune with a cosine-decayed learning rate")
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="Adam learning rate of the fine-tuning")
    parser.add_argument("--keep", default="", help="cut to a sub-architecture by posterior importance, "
                        "e.g. 'conv1=5,conv2=15,fc1=45' (bayesian.prune_to)")
    parser.add_argument("--augment", action="store_true",
                        help="fine-tune on flipped and shifted views (common.augmented; with --distill the teacher "
                             "sees the same views)")
    parser.add_argument("--augment-shift", type=int, default=2, help="with --augment: largest shift in whole "
                        "pixels (0: left-right flips only)")
    parser.add_argument("--layer-scales", default="", help="KL weight factor per Bayesian layer, "
                        "e.g. 'conv1_bn=2,fc1_bn=0.3', or 'cost' (KLAnnealing(layer_scales=...))")
    parser.add_argument("--layer-kwargs", default="{}", help="JSON passed to bayesian.convert")
    parser.add_argument("--int8", action="store_true",
                        help="export the fine-tuned small model and the dense one to full int8 and measure both on LiteRT")
    args = parser.parse_args()

    from tfcompress._io import write_text_atomic
    from tfcompress.metrics import summarize

    out = common.EXPLORE_DIR
    out.mkdir(parents=True, exist_ok=True)
    data = common.load_data()
    dense = common.cached_dense_lenet(data, args.pretrain_epochs)
    history: list[dict] = []
    run = common.train_bayesian(dense, args.method, data, epochs=args.epochs, beta=args.kl_max, lr=args.lr,
                                tau=args.tau, theta=args.theta, callbacks=[common.kept_channels(history)], verbose=0,
                                layer_kwargs=json.loads(args.layer_kwargs),
                                keep=common.parse_pairs(args.keep, int),
                                layer_scales=(args.layer_scales if args.layer_scales == "cost"
                                              else common.parse_pairs(args.layer_scales)))
    small, report, seconds = run.small, run.report, run.seconds
    summary = summarize(small)
    accuracies = [round(common.keras_accuracy(small, data), 4)]
    common.fine_tune(small, data, args.finetune_epochs, teacher=dense if args.distill else None,
                     temperature=args.distill or 4.0, cosine=args.cosine, lr=args.finetune_lr,
                     augment_shift=args.augment_shift if args.augment else None,
                     callbacks=[common.epoch_accuracies(small, data, accuracies, "fine-tuning epoch")],
                     verbose=0)
    result = {"command": " ".join(sys.argv), "structure": report.structure(), "params": summary.params,
              "MACs": summary.macs, "bayesian train s": seconds, "history": history,
              "keras accuracy after 0..F fine-tuning epochs": accuracies,
              "dense pre-trained accuracy": round(common.keras_accuracy(dense, data), 4)}
    if args.int8:
        for name, model in (("small", small), ("dense", dense)):
            row = common.export_row(f"explore {name}", model, data)
            result[f"{name} int8 accuracy (LiteRT)"] = row["int8 accuracy (LiteRT)"]
    suffix = "".join(part for part, on in ((f"_keep{args.keep.replace('=', '').replace(',', '-')}", args.keep),
                                           (f"_distill{args.distill:g}", args.distill),
                                           (f"_scales{args.layer_scales.replace('=', '').replace(',', '-')}",
                                            args.layer_scales), ("_cosine", args.cosine), (f"_augment{args.augment_shift}", args.augment),
                                           (f"_lr{args.finetune_lr:g}", args.finetune_lr != 1e-3)) if on)
    write_text_atomic(out / f"{args.method}_{args.kl_max:g}{suffix}.json", json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()

"""Bayesian structured pruning benchmark (issue 4): LeNet-5-Caffe on Fashion-MNIST, one run.

    python benchmarks/bench_bayesian.py --pretrain-epochs 25 --epochs 6 --finetune-epochs 60 \
        --dense-finetune-epochs 15 --distill 4 --cosine --finetune-lr 3e-3 --finetune-augment 0 \
        --kl-max 1.0 --method-kl vcp=1000 --keep conv1=6,conv2=13,fc1=55 --keep-methods dirichlet,sbp,bc \
        --start dense-row --cache-pretrained --gradual-methods sbp --gradual 1,4

Protocol: one dense model is pre-trained for ``--pretrain-epochs`` (Adam 1e-3, batch 128). Every
Bayesian row converts it with ``tfcompress.bayesian.convert`` and trains ``--epochs`` more
(Adam 1e-3; the KL weight warmed up linearly over the first half to ``--kl-max``, which is the
beta of a beta-ELBO: 1 is the plain ELBO), then ``bayesian.strip`` + ``shrink`` give a small
ordinary model that is exported to full int8 and measured on LiteRT. ``--method-kl vcp=30``
sets one method's beta; ``--finetune-epochs F`` trains each shrunk model F more epochs (plain
Keras fit, the dense row trains F more too), and the table then shows the accuracy before
fine-tuning beside it (``--distill T``: fine-tuning by distillation from the dense row; ``--cosine``:
a cosine-decayed learning rate; ``--finetune-lr``: its Adam learning rate); VCP is always reported
both without retraining and after it.
``--keep conv1=5,conv2=15,fc1=45`` cuts the models of ``--keep-methods`` (default: dirichlet) to that
sub-architecture by posterior importance (``bayesian.prune_to``, step 3 of Dirichlet pruning) instead of
their thresholds.
``--finetune-augment 0`` fine-tunes on images flipped left-right at random, teacher and student
seeing the same views (Beyer et al. 2022), and adds a reference row: the dense row put through the
same fine-tuning; ``--dense-finetune-epochs 15`` keeps the dense row at 15 cosine epochs while the
compressed rows fine-tune ``--finetune-epochs``.
``--start dense-row`` converts the dense row's trained model instead of the pre-training checkpoint
(every compressed row then starts from the model the first row reports); ``--cache-pretrained``
reuses the pre-training checkpoint ``explore_bayesian.py`` caches.
``--gradual-methods sbp`` adds rows where that method reaches the ``--keep`` cut gradually during
its Bayesian epochs (``--gradual 1,4``: from epoch 1 to 4; ``callbacks.PosteriorPruning``), without
and with fine-tuning.
``--cost-scales vcp`` weighs each layer's KL by what its channels cost in MACs and parameters
(``KLAnnealing(layer_scales="cost")``, recomputed every epoch). The magnitude row prunes 70% of channels with the issue-3 flow
(prune / UpdatePruning / strip / shrink) over the same epochs. Latencies: one interleaved
LiteRT run, 1 thread, ratio to dense.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import harness  # noqa: E402

LABELS = {"vcp": "VCP", "dirichlet": "Dirichlet", "sbp": "SBP", "sparse_vd": "sparse VD", "bc": "BC-GNJ",
          "slimming": "network slimming"}
PUBLISHED = [  # seed slides, MNIST LeNet-5-Caffe; published figures, not measured here
    {"model": "published (MNIST): Dirichlet", "error %": 1.1, "params": 5_500, "FLOPs": 140_000},
    {"model": "published (MNIST): BC-GNJ", "error %": 1.0, "params": 15_000, "FLOPs": 288_000},
    {"model": "published (MNIST): SBP", "error %": 0.9, "params": 99_000, "FLOPs": 226_000},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--kl-max", type=float, default=1.0, help="beta of the beta-ELBO at the end of warm-up")
    parser.add_argument("--method-kl", default="",
                        help="per-method beta overriding --kl-max, e.g. 'vcp=30,sbp=100'")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="epochs of plain training of each shrunk model (the dense row trains as many more)")
    parser.add_argument("--dense-finetune-epochs", type=int, default=None,
                        help="the dense row's epochs along the fine-tuning schedule after its --epochs "
                             "(default: --finetune-epochs), e.g. 15 to keep the dense row of 15-epoch tables "
                             "while the compressed rows fine-tune longer")
    parser.add_argument("--distill", type=float, default=0.0, metavar="T",
                        help="fine-tune the shrunk models by distillation from the dense row at temperature T "
                             "(tfcompress.distillation.Distiller, alpha 0.1); 0: on the labels only")
    parser.add_argument("--cosine", action="store_true",
                        help="fine-tuning epochs (and the dense row's last as many) decay the learning rate "
                             "along a cosine to 0")
    parser.add_argument("--finetune-lr", type=float, default=1e-3,
                        help="Adam learning rate of the fine-tuning epochs (and the dense row's last as many)")
    parser.add_argument("--finetune-augment", type=int, default=None, metavar="SHIFT",
                        help="fine-tune on views flipped left-right and shifted by up to SHIFT pixels (0: flips "
                             "only), the teacher seeing the same views (common.augmented); also adds a reference "
                             "row: the dense row put through the same fine-tuning, distilled from itself")
    parser.add_argument("--keep", default="",
                        help="cut the --keep-methods models to this sub-architecture by posterior importance (step 3 "
                             "of Dirichlet pruning), e.g. 'conv1=5,conv2=15,fc1=45'; default: their thresholds")
    parser.add_argument("--keep-methods", default="dirichlet", help="the methods --keep applies to, e.g. 'vcp,sbp'")
    parser.add_argument("--gradual-methods", default="",
                        help="methods that also get a row cut to --keep gradually during their Bayesian epochs "
                             "(callbacks.PosteriorPruning), reported without and with fine-tuning, e.g. 'sbp'")
    parser.add_argument("--gradual", default="1,4", metavar="BEGIN,END",
                        help="the epochs of the Bayesian phase over which --gradual-methods cut (cubic schedule)")
    parser.add_argument("--cost-scales", default="",
                        help="methods whose KL weight per layer follows the cost of its channels, e.g. 'vcp' "
                             "(KLAnnealing(layer_scales='cost'), bayesian.cost_scales)")
    parser.add_argument("--start", choices=["pretrained", "dense-row"], default="pretrained",
                        help="the model every compressed row converts: the dense pre-training checkpoint, or the "
                             "dense row's fully trained model (what a user compresses)")
    parser.add_argument("--cache-pretrained", action="store_true",
                        help="load the --pretrain-epochs checkpoint from benchmarks/out/explore when an earlier run "
                             "(this one or explore_bayesian.py) trained it with the same protocol; train and cache it "
                             "otherwise (ignored with --limit)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--methods", default="slimming,vcp,dirichlet,sbp,sparse_vd,bc")
    args = parser.parse_args()

    import keras
    import numpy as np

    import tfcompress
    from tfcompress import bayesian
    from tfcompress.callbacks import UpdatePruning
    from tfcompress.schedules import PolynomialDecay

    data = common.load_data(args.limit)
    n = len(data.x_train)
    steps = int(np.ceil(n / args.batch_size)) * args.epochs
    betas = common.parse_pairs(args.method_kl, float)
    unknown = set(betas) - set(bayesian.METHODS)
    if unknown:
        parser.error(f"--method-kl: unknown method(s) {sorted(unknown)}; use {bayesian.METHODS}")
    finetune = args.finetune_epochs
    dense_finetune = finetune if args.dense_finetune_epochs is None else args.dense_finetune_epochs
    keep_target = common.parse_pairs(args.keep, int)
    keep_methods = set(filter(None, args.keep_methods.split(","))) if keep_target else set()
    if keep_methods - (set(bayesian.METHODS) - {"slimming"}):
        parser.error(f"--keep-methods: use methods from {bayesian.METHODS[:-1]}")
    gradual_methods = [m for m in args.gradual_methods.split(",") if m]
    if gradual_methods and not keep_target:
        parser.error("--gradual-methods cut to the --keep sub-architecture: add --keep")
    if set(gradual_methods) - (set(bayesian.METHODS) - {"slimming"}):
        parser.error(f"--gradual-methods: use methods from {bayesian.METHODS[:-1]}")
    gradual = tuple(float(v) for v in args.gradual.split(","))
    cost_scaled = set(filter(None, args.cost_scales.split(",")))
    if cost_scaled - (set(bayesian.METHODS) - {"slimming"}):
        parser.error(f"--cost-scales: use methods with a KL term from {bayesian.METHODS[:-1]}")

    teacher = None  # the dense row's model, once trained, when --distill

    def fine_tune(model, epochs: int = finetune) -> tuple[float | None, int]:
        """Keras accuracy before fine-tuning and the seconds the fine-tuning took."""
        if not epochs:
            return None, 0
        before = round(common.keras_accuracy(model, data), 4)
        started = time.perf_counter()
        common.fine_tune(model, data, epochs, teacher=teacher, temperature=args.distill, cosine=args.cosine,
                         lr=args.finetune_lr, batch_size=args.batch_size, augment_shift=args.finetune_augment)
        return before, round(time.perf_counter() - started)
    # the cache holds full-data models only
    cache = common.EXPLORE_DIR if args.cache_pretrained and args.limit is None else None
    dense = common.cached_dense_lenet(data, args.pretrain_epochs, cache, batch_size=args.batch_size)
    pretrained = dense.get_weights()

    def fresh():
        model = common.lenet()
        model.set_weights(pretrained)
        return model

    def kept(report) -> str:
        return report.structure()

    rows: list[dict] = []
    baseline = common.compile_model(fresh())
    started = time.perf_counter()
    if args.cosine:
        baseline.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
        # the dense row's last epochs follow the fine-tuning schedule, without a teacher
        common.fine_tune(baseline, data, dense_finetune, cosine=True, lr=args.finetune_lr, batch_size=args.batch_size)
    else:  # one uninterrupted fit, as the tables before --cosine were made
        baseline.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.epochs + dense_finetune,
                     verbose=2)
    _, base_report = tfcompress.shrink(baseline, return_report=True)
    rows.append(common.export_row("dense", baseline, data, **{
        "channels": kept(base_report), "train s": round(time.perf_counter() - started)}))
    if args.distill:
        teacher = baseline
    if args.finetune_augment is not None and finetune:
        # what the compressed rows' fine-tuning recipe does to the dense model itself: if the
        # augmented views alone lifted accuracy, this row shows it next to the dense row
        recipe = common.compile_model(common.lenet())
        recipe.set_weights(baseline.get_weights())
        before, tuned = fine_tune(recipe)
        rows.append(common.export_row("dense + the fine-tuning recipe (reference)", recipe, data, **{
            "channels": kept(base_report), "train s": rows[0]["train s"] + tuned,
            "keras accuracy before fine-tuning": before,
            "note": "the dense row fine-tuned as the compressed rows are"
                    + (", distilled from its own copy" if teacher is not None else "")}))
        keras.backend.clear_session(free_memory=False)
    if args.start == "dense-row":
        # compress the model the dense row reports, as a user compresses their trained model
        pretrained = baseline.get_weights()

    schedule = PolynomialDecay(0.0, 0.7, begin_step=0, end_step=int(0.6 * steps), frequency=100)
    pruned = common.compile_model(tfcompress.prune(fresh(), schedule=schedule, granularity="channel"))
    started = time.perf_counter()
    pruned.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2,
               callbacks=[UpdatePruning()])
    small, report = tfcompress.shrink(pruned, return_report=True)
    seconds = round(time.perf_counter() - started)
    before, tuned = fine_tune(common.compile_model(small))
    rows.append(common.export_row("magnitude channels 70% (issue 3)", small, data, **{
        "channels": kept(report), "train s": seconds + tuned, "keras accuracy before fine-tuning": before}))

    for method in args.methods.split(","):
        beta_value = betas.get(method, args.kl_max)
        keep = keep_target if method in keep_methods else None
        run = common.train_bayesian(fresh(), method, data, epochs=args.epochs, beta=beta_value,
                                    batch_size=args.batch_size, keep=keep,
                                    layer_scales="cost" if method in cost_scaled else None)
        model, small, report, seconds = run.model, run.small, run.report, run.seconds
        label = LABELS[method]
        beta = "L1 on BN gamma" if method == "slimming" else f"beta {beta_value:g}"
        if method in cost_scaled:
            beta += " x the layer's channel cost (cost_scales)"
        if keep:
            beta += "; cut to " + "-".join(str(v) for v in keep.values()) + " by posterior importance (prune_to)"
        if method == "vcp":
            rows.append(common.export_row("VCP (no retraining)", small, data, **{
                "channels": kept(report), "train s": seconds, "note": beta}))
            _, tuned = fine_tune(small, max(1, finetune))
            rows.append(common.export_row(f"VCP + {max(1, finetune)} epoch(s) retraining", small, data, **{
                "channels": kept(report), "train s": seconds + tuned, "note": beta}))
        else:
            before, tuned = fine_tune(small)
            row = common.export_row(label, small, data, **{
                "channels": kept(report), "train s": seconds + tuned, "keras accuracy before fine-tuning": before,
                "note": beta})
            if method == "bc":
                bits = [layer.bit_precision() for layer in model.layers if hasattr(layer, "bit_precision")]
                row["note"] += "; bits per layer " + "-".join(str(b) for b in bits)
            rows.append(row)
        keras.backend.clear_session(free_memory=False)

    cut = "-".join(str(v) for v in keep_target.values())
    for method in gradual_methods:
        beta_value = betas.get(method, args.kl_max)
        run = common.train_bayesian(fresh(), method, data, epochs=args.epochs, beta=beta_value,
                                    batch_size=args.batch_size, keep=keep_target, gradual=gradual)
        label = LABELS[method]
        note = (f"beta {beta_value:g}; cut to {cut} gradually over epochs {gradual[0]:g}-{gradual[1]:g} "
                "(PosteriorPruning)")
        rows.append(common.export_row(f"{label}, gradual cut (no fine-tuning)", run.small, data, **{
            "channels": kept(run.report), "train s": run.seconds, "note": note}))
        before, tuned = fine_tune(run.small)
        if finetune:
            rows.append(common.export_row(f"{label}, gradual cut + {finetune} epoch(s) fine-tuning", run.small, data, **{
                "channels": kept(run.report), "train s": run.seconds + tuned,
                "keras accuracy before fine-tuning": before, "note": note}))
        keras.backend.clear_session(free_memory=False)

    common.add_latency(rows, runs=args.runs)
    dense_row = rows[0]
    for row in rows:
        # stored parameters of the shrunk model: what the int8 file holds (zeros inside a
        # kernel are stored too), so sparse VD is not credited for its unstructured zeros here
        row["params ratio"] = round(dense_row["params"] / max(row["params"], 1), 1)
        row["non-zero ratio"] = round(dense_row["non-zero params"] / max(row["non-zero params"], 1), 1)
        row["MACs ratio"] = round(dense_row["MACs"] / max(row["MACs"], 1), 1)
        row["accuracy delta (pts)"] = round(100 * (row["int8 accuracy (LiteRT)"] - dense_row["int8 accuracy (LiteRT)"]), 2)
    columns = ["model", "channels", "params", "params ratio", "non-zero params", "non-zero ratio", "MACs", "MACs ratio",
               *(["keras accuracy before fine-tuning"] if finetune else []), "int8 accuracy (LiteRT)", "accuracy delta (pts)", "int8 size (bytes)", "p50 ms (1 thread)",
               "latency vs first", "train s", "note"]
    published_rows = [{"model": p["model"], "note": f"error {p['error %']}%, {p['params']:,} params, "
                       f"{p['FLOPs']:,} FLOPs (published MNIST figure, not ours)"} for p in PUBLISHED]
    notes = [
        f"{args.pretrain_epochs} dense pre-training epochs"
        + (" (loaded from benchmarks/out/explore when an earlier run of the same protocol cached them)"
           if args.cache_pretrained else "")
        + (f"; every compressed row starts from the dense row's trained model ({args.pretrain_epochs} + "
           f"{args.epochs} + {dense_finetune} epochs, its accuracy in the first row)" if args.start == "dense-row" else "")
        + f", then {args.epochs} epochs per row"
        + (f" and {finetune} epochs of fine-tuning of the shrunk model"
           + (f" by distillation from the dense row (temperature {args.distill:g}, alpha 0.1)" if args.distill
              else " on the labels")
           + ("" if args.finetune_augment is None else
              f" on images flipped left-right at random{f' and shifted by up to {args.finetune_augment} pixels' if args.finetune_augment else ''}"
              + (", the teacher seeing the same views (Beyer et al. 2022, function matching)" if args.distill else ""))
           + f", Adam {args.finetune_lr:g}" + (" decayed to 0 along a cosine" if args.cosine else "")
           + f" (the dense row trains {args.epochs} + {dense_finetune}, its last {dense_finetune} with the same schedule"
           + (" and no teacher)" if args.distill else ")") if finetune else "")
        + f"; KL weight (beta, in each row's note) warmed up linearly over {max(1, args.epochs // 2)} epochs; "
        "Dirichlet trains only the switches "
        "(Adam 1e-2, prior 0.5); VCP prunes after each epoch with tau=0.05, theta=0.2; slimming drops |gamma| <= 0.01.",
        *([f"Rows cut to {'-'.join(str(v) for v in keep_target.values())} "
           f"({', '.join(f'{k} {v}' for k, v in keep_target.items())}): after their Bayesian training (Dirichlet: "
           "the switches alone, the network frozen, the paper's step 2) the channels of highest posterior importance "
           "are kept with bayesian.prune_to (step 3 of Dirichlet pruning, which prunes LeNet-5 to chosen "
           "sub-architectures), then the small model is fine-tuned (step 4). Methods cut: "
           f"{', '.join(sorted(keep_methods))}."] if keep_methods else []),
        *(["beta x the layer's channel cost: each Bayesian layer's KL weight is beta times "
           "bayesian.cost_scales(model) at the start of every epoch, the MACs plus parameters one more of its "
           "channels would save, relative to the model's totals, over the mean of the layers (MorphNet's "
           "FLOP-weighted penalty, Gordon et al. 2018, applied to the KL)."] if cost_scaled else []),
        *([f"Gradual rows ({', '.join(gradual_methods)}): the same Bayesian training, but the cut to {cut} happens "
           f"during it, from epoch {gradual[0]:g} to {gradual[1]:g} along Zhu and Gupta's cubic schedule on channel "
           "counts (callbacks.PosteriorPruning: every 50 steps the channels of lowest posterior importance are "
           "masked), so the network adapts to the cut before the Bayesian epochs end."] if gradual_methods else []),
        "params = parameters stored by the shrunk model (its int8 file holds them all); non-zero params also "
        "leave out the zeros inside kernels (sparse VD's unstructured sparsity); MACs of the shrunk dense model.",
        "VCP and slimming rows: LeNet-5-Caffe has no BatchNormalization, so convert inserts it; those layers' "
        "moving statistics are recalibrated on 1,000 training images (forward passes only, no gradient step) "
        "before strip; 'no retraining' means no training after pruning.",
    ]
    harness.record("04_bayesian_lenet5_fashion_mnist", "Bayesian structured pruning: LeNet-5-Caffe on Fashion-MNIST",
                   columns, common.public(rows) + published_rows, notes,
                   extra={"pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs, "kl_max": args.kl_max,
                          "method_kl": betas, "finetune_epochs": finetune, "dense_finetune_epochs": dense_finetune, "distill_temperature": args.distill,
                          "cosine": args.cosine, "finetune_lr": args.finetune_lr,
                          "finetune_augment": args.finetune_augment, "keep": keep_target, "keep_methods": sorted(keep_methods),
                          "cost_scales": sorted(cost_scaled), "start": args.start,
                          "gradual_methods": gradual_methods, "gradual": list(gradual),
                          "cache_pretrained": args.cache_pretrained})
    print(harness.table(columns, rows + published_rows))
    print("\n".join(notes))


if __name__ == "__main__":
    main()

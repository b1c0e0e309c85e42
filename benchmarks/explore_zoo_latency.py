"""Where a channel-pruned net's LiteRT latency goes (issue 19, the 0.7 bar), and what channel multiples do.

    python benchmarks/explore_zoo_latency.py [--net mobilenet_v2] [--multiples 1 8 16] [--runs 300]

One process, one thread, XNNPACK. The dense int8 file and one channel-pruned (50%) file per
``--multiples`` value (every dependency group keeps a multiple of that many channels,
``update_masks(channel_multiple=)``) are timed interleaved: MAC ratio, latency ratio and
(1 - latency ratio) / (1 - MAC ratio) for each. Then the per-op profile: every conv / depthwise /
dense / add / pad / pooling layer of the dense model and of the first pruned model exported alone
(its own int8 file, the layer's input shape) and timed interleaved with the others; the sums per op
type against each type's MACs say which ops keep their time when their MACs go. Prints the tables
and writes JSON to benchmarks/out/explore/ (an exploration, not a result of record).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_zoo  # noqa: E402
from common import EXPLORE_DIR  # noqa: E402

PROFILED = {"Conv2D": "CONV_2D", "DepthwiseConv2D": "DEPTHWISE_CONV_2D", "Dense": "FULLY_CONNECTED",
            "Add": "ADD", "ZeroPadding2D": "PAD", "GlobalAveragePooling2D": "MEAN", "AveragePooling2D": "AVERAGE_POOL_2D"}


def single_layer_files(model, out: Path, tag: str) -> list[dict]:
    """Every profiled layer of ``model`` as its own int8 file: [{layer, op, macs, path}]."""
    import keras

    from tfcompress.export import to_tflite
    from tfcompress.metrics import summarize

    macs = {row.name: row.macs or 0 for row in summarize(model).layers}
    rng = np.random.default_rng(0)
    files = []
    for layer in model.layers:
        op = PROFILED.get(type(layer).__name__)
        if op is None:
            continue
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        sub = keras.Model(inputs if len(inputs) > 1 else inputs[0], layer.output)
        samples = [rng.uniform(0, 1, (8, *t.shape[1:])).astype("float32") for t in inputs]
        path = out / f"{tag}_{layer.name}.tflite"
        to_tflite(sub, path, "int8", representative_data=samples if len(samples) > 1 else samples[0])
        files.append({"layer": layer.name, "op": op, "macs": int(macs.get(layer.name, 0)), "path": str(path)})
    return files


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="mobilenet_v2")
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    bench_zoo._one_thread()
    from tfcompress.batchnorm import recalibrate_batchnorm
    from tfcompress.export import benchmark, to_tflite

    name = args.net
    model = bench_zoo.build(name, **bench_zoo.SIZES[name])
    high = 255.0 if name in bench_zoo.RAW_PIXELS else 1.0
    x = np.random.default_rng(0).uniform(0, high, (bench_zoo.CALIBRATION, *model.input_shape[1:])).astype("float32")
    recalibrate_batchnorm(model, x)
    tmp = Path(tempfile.mkdtemp(prefix="explore_zoo_latency_"))
    paths = [tmp / "dense.tflite"]
    to_tflite(model, paths[0], "int8", representative_data=x)
    variants, smalls = [], []
    for multiple in args.multiples:
        small, report = bench_zoo.channel_pruned(model, channel_multiple=multiple)
        path = tmp / f"pruned_m{multiple}.tflite"
        to_tflite(small, path, "int8", representative_data=x)
        paths.append(path)
        smalls.append(small)
        variants.append({"channel multiple": multiple, "MACs": int(report.macs_after), "MAC ratio":
                         report.macs_after / report.macs_before, "channels": {k: list(v) for k, v in report.channels.items()}})
    latency = benchmark([str(p) for p in paths], runs=args.runs, warmup=30, threads=1)
    dense_ms = latency.results[0].p50_ms
    print(f"{name}: dense p50 {dense_ms:.4f} ms ({latency.results[0].runtime.delegate})")
    for variant, result in zip(variants, latency.results[1:], strict=True):
        ratio = result.p50_ms / dense_ms
        variant.update({"p50 ms": result.p50_ms, "latency ratio": ratio,
                        "latency / MAC reduction": (1 - ratio) / (1 - variant["MAC ratio"])})
        print(f"  multiple {variant['channel multiple']:3d}: MAC ratio {variant['MAC ratio']:.3f}, p50 {result.p50_ms:.4f} ms, "
              f"latency ratio {ratio:.3f}, latency / MAC reduction {variant['latency / MAC reduction']:.3f}")
    result = {"net": name, "dense p50 ms": dense_ms, "variants": variants}
    if not args.no_profile:
        files = single_layer_files(model, tmp, "dense") + single_layer_files(smalls[0], tmp, "pruned")
        timed = benchmark([f["path"] for f in files], runs=args.runs, warmup=30, threads=1)
        for f, r in zip(files, timed.results, strict=True):
            f["p50 ms"] = r.p50_ms
        # an empty invoke's cost: the smallest single-op file is an upper bound of the per-file overhead
        by_type: dict[str, dict] = {}
        for f in files:
            tag = "dense" if Path(f["path"]).name.startswith("dense_") else "pruned"
            entry = by_type.setdefault(f["op"], {"dense ms": 0.0, "pruned ms": 0.0, "dense MACs": 0, "pruned MACs": 0,
                                                 "count": 0})
            entry[f"{tag} ms"] += f["p50 ms"]
            entry[f"{tag} MACs"] += f["macs"]
            entry["count"] += tag == "dense"
        print(f"\nper-op profile (each layer alone, p50 summed; whole files: dense {dense_ms:.4f} ms, pruned "
              f"{latency.results[1].p50_ms:.4f} ms)")
        print(f"{'op':20s} {'n':>3s} {'dense ms':>9s} {'pruned ms':>9s} {'time ratio':>10s} {'MAC ratio':>9s} "
              f"{'share of dense time':>19s} {'share of dense MACs':>19s}")
        total_ms = sum(e["dense ms"] for e in by_type.values())
        total_macs = sum(e["dense MACs"] for e in by_type.values()) or 1
        for op, e in sorted(by_type.items(), key=lambda kv: -kv[1]["dense ms"]):
            macs = e["pruned MACs"] / e["dense MACs"] if e["dense MACs"] else float("nan")
            print(f"{op:20s} {e['count']:3d} {e['dense ms']:9.4f} {e['pruned ms']:9.4f} {e['pruned ms'] / e['dense ms']:10.3f} "
                  f"{macs:9.3f} {e['dense ms'] / total_ms:19.1%} {e['dense MACs'] / total_macs:19.1%}")
        result.update(profile=by_type, layers=[{k: v for k, v in f.items() if k != "path"} for f in files],
                      sum_dense_ms=total_ms, sum_pruned_ms=sum(e["pruned ms"] for e in by_type.values()))
    EXPLORE_DIR.mkdir(parents=True, exist_ok=True)
    out = EXPLORE_DIR / f"zoo_latency_{name}.json"
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

"""Time, FLOPs and peak memory per FC-CLIP stage at one input size, on this machine.

Each model runs in its own child process (so peak memory is its own) with random weights of the
real architecture; timings are medians over --repeats frames after one warm-up frame. FLOPs come
from torch.utils.flop_counter (matmuls and convolutions; grid_sample and element-wise ops are
not counted), so they are a lower bound that lets a GPU user predict a frame rate.

    .venv/bin/python bench/bench_engine.py [--models convnext_large rn50] [--size 640x480]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

STAGES = {  # stage name -> module path inside the FCCLIP model
    "backbone (frozen CLIP)": "backbone",
    "pixel decoder": "sem_seg_head.pixel_decoder",
    "transformer decoder": "sem_seg_head.predictor",
}
CLASSIFIERS = "OOV pooling + classifiers + ensemble"
POSTPROCESS = "pre + post-processing"


def measure(model_name: str, width: int, height: int, repeats: int) -> dict:
    from fcclip_ros.engine import Engine, EngineConfig
    from fcclip_ros.model.classification import TextClassifier
    from fcclip_ros.preprocess import prepare_batch

    build_start = time.perf_counter()
    engine = Engine(EngineConfig(model=model_name, weights="random", clip_weights="random",
                                 device="cpu", input_short_side=min(width, height),
                                 max_long_side=max(width, height), cache_dir="/tmp/fcclip-bench"))
    build_seconds = time.perf_counter() - build_start
    model = engine.model
    image = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)

    times: dict[str, list[float]] = defaultdict(list)
    started: dict[str, float] = {}
    for stage, path in STAGES.items():
        module = model.get_submodule(path)
        module.register_forward_pre_hook(
            lambda *_, stage=stage: started.__setitem__(stage, time.perf_counter()))
        module.register_forward_hook(
            lambda *_, stage=stage: times[stage].append(time.perf_counter() - started[stage]))
    model.register_forward_pre_hook(lambda *_: started.__setitem__("forward", time.perf_counter()))
    model.register_forward_hook(
        lambda *_: times["forward"].append(time.perf_counter() - started["forward"]))

    engine.segment(image)  # warm-up
    times.clear()
    for _ in range(repeats):
        start = time.perf_counter()
        engine.segment(image)
        times["total"].append(time.perf_counter() - start)

    median = {name: statistics.median(values) for name, values in times.items()}
    stage_seconds = {stage: median[stage] for stage in STAGES}
    stage_seconds[CLASSIFIERS] = median["forward"] - sum(stage_seconds.values())
    stage_seconds[POSTPROCESS] = median["total"] - median["forward"]
    # FlopCounterMode's per-module breakdown needs autograd bookkeeping, which the engine's
    # inference_mode switches off: count one forward with grad enabled on plain tensors.
    batch = prepare_batch([image], min(width, height), max(width, height), engine.device)
    classifier = engine.vocabulary.current.classifier
    classifier = TextClassifier(classifier.embeddings.clone(), classifier.class_of_row.clone(),
                                classifier.seen.clone())
    counter = FlopCounterMode(display=False)
    with counter:
        model(batch.tensor.clone(), classifier)
    by_module = counter.get_flop_counts()
    stage_flops = {stage: sum(by_module.get(f"FCCLIP.{path}", {}).values())
                   for stage, path in STAGES.items()}
    stage_flops[CLASSIFIERS] = counter.get_total_flops() - sum(stage_flops.values())
    stage_flops[POSTPROCESS] = float("nan")  # interpolation and element-wise ops only

    return {
        "model": model_name,
        "build_seconds": build_seconds,
        "seconds": stage_seconds,
        "total_seconds": median["total"],
        "gflops": {stage: value / 1e9 for stage, value in stage_flops.items()},
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "threads": torch.get_num_threads(),
    }


def _model_gflops(result: dict) -> float:
    return sum(v for stage, v in result["gflops"].items() if stage != POSTPROCESS)


def print_table(results: list[dict], size: str) -> None:
    print(f"\nFC-CLIP per stage at {size}, CPU, fp32, {results[0]['threads']} threads "
          "(median seconds / GFLOPs; post-processing FLOPs are not counted)")
    header = "".join(f" | {r['model'] + ' s':>20s} | {r['model'] + ' GFLOP':>20s}" for r in results)
    print(f"{'stage':38s}{header}")
    for stage in results[0]["seconds"]:
        row = "".join(f" | {r['seconds'][stage]:20.3f} | {r['gflops'][stage]:20.1f}"
                      for r in results)
        print(f"{stage:38s}{row}")
    total = "".join(f" | {r['total_seconds']:20.3f} | {_model_gflops(r):20.1f}" for r in results)
    print(f"{'total per frame':38s}{total}")
    print("peak memory (RSS, GB): " + ", ".join(f"{r['model']} {r['peak_rss_gb']:.2f}"
                                                 for r in results))
    if len(results) > 1:
        base = results[0]
        for other in results[1:]:
            print(f"ratio {base['model']} / {other['model']}: time "
                  f"{base['total_seconds'] / other['total_seconds']:.2f}x, FLOPs "
                  f"{_model_gflops(base) / _model_gflops(other):.2f}x")


def main() -> None:
    from fcclip_ros.cli.arguments import image_size  # the parser of fcclip-ros export --size

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["convnext_large", "rn50"])
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = image_size(args.size)
    if args.child:
        print(json.dumps(measure(args.models[0], width, height, args.repeats)))
        return
    results = []
    for model_name in args.models:
        child = subprocess.run(
            [sys.executable, __file__, "--child", "--models", model_name, "--size", args.size,
             "--repeats", str(args.repeats)],
            capture_output=True, text=True, check=True,
        )
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print_table(results, args.size)


if __name__ == "__main__":
    main()

"""Peak memory (RSS) of one Engine.segment call per input size, against the documented bound.

Each case runs in its own child process with random weights of the real architecture, at the
official input_short_side 800 / max_long_side 1333 unless told otherwise. Peak RSS is read from
Linux's /proc/self/status after resetting it (/proc/self/clear_refs), split at the end of the
network's forward: "network" = pre-processing, inputs and activations at the resized input,
"post" = everything after (masks to the input size, panoptic merging or semantic argmax, the
published maps), each above the RSS when it began; "segment" = the whole call above the RSS
before it. "bound" is the post-processing formula of fcclip_ros.postprocess.

The children run with MALLOC_MMAP_THRESHOLD_=131072, so that glibc hands every freed tensor back
to the system: with its default, post-processing reuses memory the network freed and kept, and
its own need would not show in RSS (the default allocator's process peak is then lower, not
higher). Random ConvNeXt-L weights vote "void" for every query, which would leave panoptic
merging nothing to do; the panoptic cases take the void logit out in a forward hook so that all
Q queries survive: the worst case, the one the bound is written for. A case whose bound plus
the memory of the cases before it exceeds what the machine has available is skipped, rather
than run into the out-of-memory killer of a shared machine.

    .venv/bin/python bench/bench_memory.py [--sizes 640x480 1920x1080 4096x3072] [--short-side 800]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CASES = {  # name -> (mode, vocabulary preset)
    "panoptic coco": ("panoptic", "coco"),
    "semantic lvis": ("semantic", "lvis"),
}
MAX_LONG_SIDE = 1333


def _proc_bytes(path: str, field: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in {path}")


def _reset_peak() -> int:
    """Reset this process's peak RSS to its current RSS and return it."""
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_bytes("/proc/self/status", "VmRSS")


def post_processing_bound(mode: str, size: tuple[int, int], padded: tuple[int, int],
                          num_queries: int, chunk: int) -> int:
    """The bound documented in fcclip_ros.postprocess, in bytes."""
    pixels, padded_pixels = size[0] * size[1], padded[0] * padded[1]
    bound = 4 * chunk * padded_pixels + (4 * chunk + 60) * pixels
    return bound + (4 * num_queries * pixels if mode == "semantic" else 0)


def measure(case: str, model_name: str, width: int, height: int, short_side: int,
            base_gb: float) -> dict:
    import numpy as np
    import torch

    from fcclip_ros.engine import Engine, EngineConfig
    from fcclip_ros.model.config import VARIANTS
    from fcclip_ros.postprocess import MASK_CHUNK_SIZE
    from fcclip_ros.preprocess import SIZE_DIVISIBILITY, resized_size

    mode, preset = CASES[case]
    queries = VARIANTS[model_name].num_queries
    resized = resized_size(height, width, short_side, MAX_LONG_SIDE)
    padded = tuple(-(-side // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY for side in resized)
    bound_gb = post_processing_bound(mode, (height, width), padded, queries,
                                     MASK_CHUNK_SIZE) / 1e9
    result = {"case": case, "size": f"{width}x{height}", "padded": f"{padded[1]}x{padded[0]}",
              "queries": queries, "bound_gb": bound_gb}
    available_gb = _proc_bytes("/proc/meminfo", "MemAvailable") / 1e9
    if base_gb + bound_gb > 0.9 * available_gb:
        return {**result, "skipped": f"needs about {base_gb + bound_gb:.1f} GB, "
                                     f"{available_gb:.1f} GB available"}

    engine = Engine(EngineConfig(model=model_name, weights="random", clip_weights="random",
                                 device="cpu", mode=mode, vocabulary_preset=preset,
                                 input_short_side=short_side, max_long_side=MAX_LONG_SIDE,
                                 cache_dir="/tmp/fcclip-bench"))
    image = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    marks: dict[str, float] = {}

    def forward_starts(*_) -> None:
        marks["start"], marks["network_base"] = time.perf_counter(), _reset_peak()

    def forward_ends(_module, _inputs, outputs):
        marks["network_peak"] = _proc_bytes("/proc/self/status", "VmHWM")
        marks["forward_end"], marks["post_base"] = time.perf_counter(), _reset_peak()
        if mode != "panoptic":
            return outputs
        mask_logits, class_logits = outputs
        class_logits = class_logits.clone()
        class_logits[..., -1] = -torch.inf  # every query survives (see the module docstring)
        return mask_logits, class_logits

    engine.model.register_forward_pre_hook(forward_starts)
    engine.model.register_forward_hook(forward_ends)
    before = _proc_bytes("/proc/self/status", "VmRSS")
    engine.segment(image, with_confidence=True)
    end = time.perf_counter()
    post_peak = _proc_bytes("/proc/self/status", "VmHWM")
    network_gb = (marks["network_peak"] - marks["network_base"]) / 1e9
    post_gb = (post_peak - marks["post_base"]) / 1e9
    return {
        **result,
        "classes": len(engine.vocabulary.current.vocabulary.names),
        "model_gb": before / 1e9,
        "network_gb": network_gb,
        "post_gb": post_gb,
        # The whole call above the RSS before it: the higher of the two parts' peaks, each on top
        # of what was resident when it began.
        "segment_gb": max(marks["network_peak"], post_peak) / 1e9 - before / 1e9,
        "network_s": marks["forward_end"] - marks["start"],
        "post_s": end - marks["forward_end"],
    }


def print_table(results: list[dict], model_name: str, short_side: int) -> None:
    print(f"\nPeak RSS of one Engine.segment call, {model_name}, random weights, CPU fp32, "
          f"input_short_side {short_side}, max_long_side {MAX_LONG_SIDE}; GB above the RSS "
          "before each part")
    print(f"{'input':>10s} | {'case':13s} | {'C':>4s} | {'Q':>3s} | {'padded':>9s} | "
          f"{'model':>5s} | {'network':>7s} | {'post':>5s} | {'bound':>5s} | "
          f"{'post/bound':>10s} | {'segment':>7s} | {'network s':>9s} | {'post s':>6s}")
    for r in results:
        if "skipped" in r:
            print(f"{r['size']:>10s} | {r['case']:13s} | skipped: {r['skipped']} "
                  f"(bound {r['bound_gb']:.2f} GB)")
            continue
        print(f"{r['size']:>10s} | {r['case']:13s} | {r['classes']:4d} | {r['queries']:3d} | "
              f"{r['padded']:>9s} | {r['model_gb']:5.2f} | {r['network_gb']:7.2f} | "
              f"{r['post_gb']:5.2f} | {r['bound_gb']:5.2f} | "
              f"{r['post_gb'] / r['bound_gb']:10.2f} | {r['segment_gb']:7.2f} | "
              f"{r['network_s']:9.1f} | {r['post_s']:6.1f}")
    measured: dict[str, list[dict]] = {}
    for r in results:
        if "skipped" not in r:
            measured.setdefault(r["case"], []).append(r)
    for case, rows in measured.items():
        if len(rows) > 1:
            first, last = rows[0], rows[-1]
            print(f"{case}: {last['size']} / {first['size']}: network "
                  f"{last['network_gb'] / first['network_gb']:.2f}x, post-processing "
                  f"{last['post_gb'] / first['post_gb']:.2f}x")


def main() -> None:
    from fcclip_ros.cli.arguments import image_size  # the parser of fcclip-ros export --size

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1920x1080", "4096x3072"],
                        help="WIDTHxHEIGHT of the frames")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--model", default="convnext_large")
    parser.add_argument("--short-side", type=int, default=800,
                        help="input_short_side (800 official; smaller for a quick run)")
    parser.add_argument("--child", nargs=3, metavar=("CASE", "SIZE", "BASE_GB"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, size, base_gb = args.child
        width, height = image_size(size)
        print(json.dumps(measure(case, args.model, width, height, args.short_side,
                                 float(base_gb))))
        return
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    results = []
    base_gb = 4.0  # model + network, until a case has measured them
    for case in args.cases:
        for size in args.sizes:
            child = subprocess.run(
                [sys.executable, __file__, "--child", case, size, f"{base_gb:.2f}",
                 "--model", args.model, "--short-side", str(args.short_side)],
                capture_output=True, text=True, check=True, env=environment,
            )
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            if "skipped" not in results[-1]:
                base_gb = max(base_gb, results[-1]["model_gb"] + results[-1]["network_gb"])
    print_table(results, args.model, args.short_side)


if __name__ == "__main__":
    main()

"""Where a frame's time goes on the GPU: pre-processing, network, post-processing.

For each model, mode and network size it times the three stages of Engine.segment separately
(device synchronised after each, median of --frames after a warm-up) and prints the top
operators of one torch.profiler run by self CPU and self CUDA time. A frame whose network is
fast but whose total is not is bound by host work (Python, launches, copies), not the GPU.
--no-tf32 runs everything with TF32 off in cuDNN and cuBLAS, for comparing fp32 with the CPU.

    .venv/bin/python bench/gpu_profile.py --models rn50 convnext_large --short-sides 480 800
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

import numpy as np
import skimage.data
import torch
from torch.profiler import ProfilerActivity, profile

from fcclip_ros.engine import Engine, EngineConfig
from fcclip_ros.preprocess import prepare_batch, resize_image


def synchronized_seconds(device: torch.device, work) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def stage_times(engine: Engine, image: np.ndarray, frames: int) -> dict[str, float]:
    """Median milliseconds of pre-processing, network and the whole segment() call."""
    device = engine.device
    config = engine.config
    state = engine.vocabulary.current
    times: dict[str, list[float]] = {"prepare": [], "network": [], "segment": []}
    for _ in range(frames + 2):
        prepare, batch = synchronized_seconds(device, lambda: prepare_batch(
            [image], config.input_short_side, config.max_long_side, device))
        with torch.inference_mode():
            network, _ = synchronized_seconds(device, lambda tensor=batch.tensor: engine.forward(
                tensor, state.classifier, False))
        whole, _ = synchronized_seconds(device, lambda: engine.segment(image,
                                                                       with_confidence=False))
        for name, seconds in (("prepare", prepare), ("network", network), ("segment", whole)):
            times[name].append(seconds)
    return {name: 1000 * statistics.median(values[2:]) for name, values in times.items()}


def print_profile(engine: Engine, image: np.ndarray, rows: int) -> None:
    activities = [ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as trace:
        for _ in range(3):
            engine.segment(image, with_confidence=False)
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
    averages = trace.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    if engine.device.type == "cuda":
        print(averages.table(sort_by="self_cuda_time_total", row_limit=rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--models", nargs="+", default=["rn50"])
    parser.add_argument("--short-sides", nargs="+", type=int, default=[480])
    parser.add_argument("--modes", nargs="+", default=["panoptic", "semantic"],
                        choices=["panoptic", "semantic"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--profile-rows", type=int, default=0,
                        help="print torch.profiler's top operators (0: no profile)")
    parser.add_argument("--no-tf32", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    print(f"device {device}; torch {torch.__version__}; cudnn tf32 "
          f"{torch.backends.cudnn.allow_tf32}; matmul tf32 {torch.backends.cuda.matmul.allow_tf32}")
    image = resize_image(np.ascontiguousarray(skimage.data.astronaut()[..., :3]), (480, 640))
    print("| model | mode | input | precision | prepare ms | network ms | segment ms | "
          "post-processing ms (segment - prepare - network) |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for model, side, mode, precision in itertools.product(args.models, args.short_sides,
                                                          args.modes, args.precisions):
        engine = Engine(EngineConfig(model=model, mode=mode, precision=precision,
                                     weights="random", clip_weights="random",
                                     input_short_side=side, max_long_side=2 * side,
                                     device=str(device)))
        ms = stage_times(engine, image, args.frames)
        post = ms["segment"] - ms["prepare"] - ms["network"]
        print(f"| {model} | {mode} | {side} | {precision} | {ms['prepare']:.1f} | "
              f"{ms['network']:.1f} | {ms['segment']:.1f} | {post:.1f} |", flush=True)
        if args.profile_rows:
            print_profile(engine, image, args.profile_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

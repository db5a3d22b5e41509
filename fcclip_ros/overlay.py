"""Colours and names drawn over the input image, for people looking at the output in RViz.

A class keeps its colour across frames, cameras, vocabulary swaps and runs because the colour
is derived from the class name, not from its index in the current vocabulary. Pure NumPy/OpenCV.
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from fcclip_ros.result import NO_INSTANCE, Segment

_MIN_NAME_AREA_FRACTION = 0.001  # smaller segments get no name, which would only hide the photo
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class OverlayStyle:
    """How what is drawn for people looks: the overlay, and how long RViz keeps the markers.
    All of it is tunable at runtime through node parameters."""

    alpha: float = 0.5  # weight of the class colour against the photo, 0..1
    boundaries: bool = True  # one-pixel white lines between segments
    names: bool = True  # class names at the segments' centres
    font_scale: float = 0.5
    marker_lifetime_s: float = 2.0  # 0: until replaced


def class_color(name: str) -> tuple[int, int, int]:
    """A bright RGB colour that depends only on the class name (stable across processes)."""
    digest = zlib.crc32(name.strip().lower().encode("utf-8"))
    hue = (digest & 0xFFFF) / 0x10000
    saturation = 0.55 + 0.4 * ((digest >> 16) & 0xFF) / 0xFF
    value = 0.75 + 0.25 * ((digest >> 24) & 0xFF) / 0xFF
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def _boundaries(instances: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour belongs to another segment."""
    edge = np.zeros(instances.shape, dtype=bool)
    edge[:, :-1] |= instances[:, :-1] != instances[:, 1:]
    edge[:-1, :] |= instances[:-1, :] != instances[1:, :]
    return edge


def _draw_name(image: np.ndarray, text: str, center: tuple[float, float], scale: float) -> None:
    """Text centred on a point, white on a dark outline so it reads on any colour."""
    (width, height), _ = cv2.getTextSize(text, _FONT, scale, 1)
    origin = (int(center[0] - width / 2), int(center[1] + height / 2))
    cv2.putText(image, text, origin, _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def draw_overlay(
    rgb: np.ndarray,
    instances: np.ndarray,
    segments: Sequence[Segment],
    style: OverlayStyle = OverlayStyle(),
) -> np.ndarray:
    """The photo (H, W, 3) uint8 with each segment of `instances` tinted by its class colour."""
    if rgb.shape[:2] != instances.shape:
        raise ValueError(f"image {rgb.shape[:2]} and instances {instances.shape} differ in size")
    palette = np.zeros((int(instances.max(initial=0)) + 1, 3), dtype=np.float32)  # id -> colour
    for segment in segments:
        if segment.id < len(palette):
            palette[segment.id] = class_color(segment.label)
    owned = instances != NO_INSTANCE
    out = rgb.astype(np.float32)
    out[owned] = (1.0 - style.alpha) * out[owned] + style.alpha * palette[instances[owned]]
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if style.boundaries:
        out[_boundaries(instances)] = 255
    if style.names and segments:
        flat = instances.ravel()
        rows, cols = np.indices(instances.shape)
        count = np.bincount(flat, minlength=len(palette))
        sum_x = np.bincount(flat, weights=cols.ravel(), minlength=len(palette))
        sum_y = np.bincount(flat, weights=rows.ravel(), minlength=len(palette))
        min_area = _MIN_NAME_AREA_FRACTION * instances.size
        for segment in sorted(segments, key=lambda s: -s.area):  # small ones end up on top
            if segment.id < len(count) and count[segment.id] >= max(min_area, 1):
                n = count[segment.id]
                center = (sum_x[segment.id] / n, sum_y[segment.id] / n)
                _draw_name(out, segment.label, center, style.font_scale)
    return out

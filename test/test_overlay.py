"""The overlay tints segments by class name, marks their boundaries and names them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import skimage.data

from fcclip_ros.overlay import OverlayStyle, class_color, draw_overlay
from fcclip_ros.result import Segment

pytestmark = pytest.mark.fast

PHOTO = np.ascontiguousarray(skimage.data.coffee()[:200, :240])  # real photo, 200x240


def two_cups() -> tuple[np.ndarray, list[Segment]]:
    """Instances: two "cup" segments and one "table" segment, the rest unowned."""
    instances = np.zeros(PHOTO.shape[:2], np.uint16)
    instances[20:80, 20:100] = 3
    instances[120:180, 20:100] = 7
    instances[:, 150:] = 1
    segments = [
        Segment(3, 0, "cup", 0.9, True, 60 * 80, (20, 20, 80, 60)),
        Segment(7, 0, "cup", 0.8, True, 60 * 80, (20, 120, 80, 60)),
        Segment(1, 1, "table", 0.7, False, 200 * 90, (150, 0, 90, 200)),
    ]
    return instances, segments


def test_class_colour_depends_only_on_the_name_even_in_another_process():
    assert class_color("cup") == class_color("cup")
    assert class_color("cup") != class_color("table")
    code = "from fcclip_ros.overlay import class_color; print(*class_color('cup'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert tuple(int(v) for v in other.stdout.split()) == class_color("cup")


def test_class_colours_are_bright_and_spread_over_many_names():
    names = [f"class {i}" for i in range(200)]
    colours = {class_color(name) for name in names}
    assert len(colours) > 190
    assert all(max(colour) >= 190 for colour in colours)


def test_segments_are_blended_with_their_class_colour_and_unowned_pixels_untouched():
    instances, segments = two_cups()
    style = OverlayStyle(alpha=0.5, boundaries=False, names=False)
    out = draw_overlay(PHOTO, instances, segments, style)
    assert out.dtype == np.uint8 and out.shape == PHOTO.shape
    for segment_id, name in [(3, "cup"), (7, "cup"), (1, "table")]:
        mask = instances == segment_id
        expected = 0.5 * PHOTO[mask] + 0.5 * np.array(class_color(name))
        assert np.abs(out[mask].astype(float) - expected).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(out[instances == 0], PHOTO[instances == 0])


def test_zero_alpha_without_decorations_returns_the_photo_unchanged():
    instances, segments = two_cups()
    out = draw_overlay(PHOTO, instances, segments, OverlayStyle(0.0, False, False))
    np.testing.assert_array_equal(out, PHOTO)


def test_boundaries_are_drawn_white_exactly_where_segments_meet():
    instances, segments = two_cups()
    out = draw_overlay(PHOTO, instances, segments, OverlayStyle(0.0, boundaries=True, names=False))
    white = np.all(out == 255, axis=-1) & np.any(PHOTO != 255, axis=-1)
    assert white[20:80, 99].all() and white[79, 20:100].all()  # right and bottom edge of cup 3
    assert white[:, 149].all()  # left edge of the table
    assert not white[30:70, 30:90].any() and not white[100, 110:140].any()


def test_names_are_drawn_inside_named_segments_only():
    instances, segments = two_cups()
    plain = draw_overlay(PHOTO, instances, segments, OverlayStyle(0.0, False, False))
    named = draw_overlay(PHOTO, instances, segments, OverlayStyle(0.0, False, True))
    changed = np.any(named != plain, axis=-1)
    for segment_id in (3, 7, 1):
        assert changed[instances == segment_id].sum() > 20  # text pixels inside each segment
    cup = np.argwhere(changed[:100, :140])
    center = cup.mean(axis=0)
    assert abs(center[0] - 50) < 8 and abs(center[1] - 60) < 12  # centred on cup 3 (rows 20..80)
    assert not changed[0:10, 0:140].any()


def test_tiny_segments_get_no_name():
    instances = np.zeros(PHOTO.shape[:2], np.uint16)
    instances[50:53, 50:53] = 1  # 9 pixels of a 48000-pixel image
    segments = [Segment(1, 0, "crumb", 0.5, True, 9, (50, 50, 3, 3))]
    plain = draw_overlay(PHOTO, instances, segments, OverlayStyle(0.3, False, False))
    named = draw_overlay(PHOTO, instances, segments, OverlayStyle(0.3, False, True))
    np.testing.assert_array_equal(named, plain)

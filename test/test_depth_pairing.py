"""Pairing colour frames with depth frames by stamp: exact, nearest within the delay (exactly at
its boundary), in either arrival order, at different rates, however slow the network, with memory
bounded in time and bytes, live (monotonic clock, waiting) and recorded (log time, no waiting)."""

from __future__ import annotations

import threading
import time

import pytest

from fcclip_ros.depth_pairing import DepthPairing

pytestmark = pytest.mark.fast

MS = 1_000_000  # nanoseconds


def paired(pairing: DepthPairing, colour_stamp: int, now: int = 0) -> object:
    """The depth a colour frame entered now gets, taken at once."""
    return pairing.take(pairing.add_colour(colour_stamp, now))


def test_exact_stamp_wins_over_nearer_arrivals():
    pairing = DepthPairing(max_delay_s=0.05, wait_s=0.05)
    for stamp in (100, 133, 166):
        pairing.add_depth(stamp * MS, f"depth {stamp}", now_ns=0)
    assert paired(pairing, 133 * MS) == "depth 133"


def test_nearest_depth_within_the_delay_pairs_and_beyond_it_none_does():
    pairing = DepthPairing(max_delay_s=0.05, wait_s=0.05)
    for stamp in (100, 200):
        pairing.add_depth(stamp * MS, f"depth {stamp}", now_ns=0)
    assert paired(pairing, 140 * MS) == "depth 100"
    assert paired(pairing, 170 * MS) == "depth 200"
    assert paired(pairing, 150 * MS) == "depth 200"  # a tie: the later one
    assert paired(pairing, 251 * MS) is None  # 51 ms off


@pytest.mark.parametrize("max_delay_ns", [0, 1, 50 * MS])
def test_a_gap_of_exactly_the_delay_pairs_and_one_nanosecond_more_does_not(max_delay_ns):
    pairing = DepthPairing(max_delay_s=max_delay_ns / 1e9, wait_s=0.0)
    colour = 1_000 * MS
    pairing.add_depth(colour + max_delay_ns + 1, "too late", now_ns=0)
    assert paired(pairing, colour) is None
    pairing.add_depth(colour - max_delay_ns - 1, "too early", now_ns=0)
    assert paired(pairing, colour) is None
    pairing.add_depth(colour - max_delay_ns, "at the boundary", now_ns=0)
    assert paired(pairing, colour) == "at the boundary"


def test_a_colour_frame_keeps_its_depth_however_long_the_network_takes():
    """The colour frame is entered on arrival; two seconds of 30 Hz depth later (more than the
    one-second window, and far more than the last 16 frames), its depth is still its own."""
    pairing = DepthPairing(max_delay_s=0.05, wait_s=0.05)
    colour = 1_000 * MS
    pairing.add_depth(colour - 20 * MS, "20 ms early", now_ns=colour)
    pending = pairing.add_colour(colour, now_ns=colour + 5 * MS)
    for frame in range(1, 61):
        stamp = colour + 13 * MS + frame * 33 * MS - 33 * MS
        pairing.add_depth(stamp, f"depth {stamp // MS}", now_ns=stamp + 5 * MS)
    assert pairing.waiting == 0  # decided: no longer offered every depth
    assert pairing.take(pending) == "depth 1013"  # 13 ms late beats 20 ms early


def test_depth_kept_is_bounded_by_the_time_window_and_by_bytes():
    pairing = DepthPairing(max_delay_s=0.05, wait_s=0.05, window_s=0.5, max_bytes=10_000)
    for frame in range(30):  # 30 Hz for one second, 1 kB each
        pairing.add_depth(frame * 33 * MS, frame, now_ns=frame * 33 * MS, size_bytes=1_000)
    assert paired(pairing, 29 * 33 * MS) == 29
    assert paired(pairing, 10 * 33 * MS) is None  # more than 0.5 s behind the newest: gone
    assert pairing.kept_bytes <= 1_000 * 16  # the window: about 15 frames
    small = DepthPairing(max_delay_s=0.05, wait_s=0.05, window_s=10.0, max_bytes=3_000)
    for frame in range(10):
        small.add_depth(frame * 33 * MS, frame, now_ns=0, size_bytes=1_000)
    assert small.kept_bytes == 3_000
    assert paired(small, 5 * 33 * MS) is None and paired(small, 7 * 33 * MS) == 7


def test_depth_arriving_after_its_colour_frame_is_waited_for_until_the_wait_ends():
    pairing = DepthPairing(max_delay_s=0.05, wait_s=2.0)
    pairing.add_depth(100 * MS, "depth 100", time.monotonic_ns())
    pending = pairing.add_colour(130 * MS, time.monotonic_ns())
    later = threading.Timer(
        0.05, lambda: pairing.add_depth(130 * MS, "depth 130", time.monotonic_ns()))
    later.start()
    start = time.monotonic()
    assert pairing.wait(pending, time.monotonic_ns) == "depth 130"
    assert time.monotonic() - start < 1.0  # returned when it came, not at the end of the wait
    # An older one within the delay is taken once nothing newer came by the end of the wait.
    short = DepthPairing(max_delay_s=0.05, wait_s=0.1)
    short.add_depth(130 * MS, "depth 130", time.monotonic_ns())
    pending = short.add_colour(160 * MS, time.monotonic_ns())
    start = time.monotonic()
    assert short.wait(pending, time.monotonic_ns) == "depth 130"
    assert 0.09 < time.monotonic() - start < 1.0


def test_a_newer_depth_ends_the_wait_at_once_with_the_nearest():
    pairing = DepthPairing(max_delay_s=0.05, wait_s=5.0)
    pairing.add_depth(100 * MS, "depth 100", time.monotonic_ns())
    pairing.add_depth(140 * MS, "depth 140", time.monotonic_ns())
    start = time.monotonic()
    assert pairing.wait(pairing.add_colour(125 * MS, time.monotonic_ns()),
                        time.monotonic_ns) == "depth 140"
    assert time.monotonic() - start < 0.5


def test_colour_at_30_hz_and_depth_at_15_hz_pair_each_frame_with_the_nearest_depth():
    pairing = DepthPairing(max_delay_s=0.05, wait_s=0.05)
    colour_stamps = [round(i * 1e9 / 30) for i in range(30)]
    depth_stamps = [round(i * 1e9 / 15) + 2 * MS for i in range(15)]  # a 2 ms clock offset
    for stamp in depth_stamps:
        pairing.add_depth(stamp, stamp, now_ns=0)
    for colour in colour_stamps:
        nearest = min(depth_stamps, key=lambda d: abs(d - colour))
        assert paired(pairing, colour) == nearest


def test_stop_ends_a_wait_and_start_begins_afresh():
    pairing = DepthPairing(max_delay_s=0.05, wait_s=3600.0)
    pairing.add_depth(90 * MS, "depth 90", time.monotonic_ns())
    pending = pairing.add_colour(1000 * MS, time.monotonic_ns())
    threading.Timer(0.05, pairing.stop).start()
    start = time.monotonic()
    assert pairing.wait(pending, time.monotonic_ns) is None  # would wait an hour without stop
    assert time.monotonic() - start < 1.0
    pairing.start()
    assert paired(pairing, 90 * MS, time.monotonic_ns()) is None  # no frames kept


def test_colour_frames_nobody_takes_are_forgotten_once_decided():
    pairing = DepthPairing(max_delay_s=0.05, wait_s=0.1)
    for frame in range(100):  # colour frames dropped for newer ones, never taken
        pairing.add_colour(frame * 33 * MS, now_ns=frame * 33 * MS)
    assert pairing.waiting <= 4  # those still within their 0.1 s wait
    pairing.add_depth(100 * 33 * MS, "covers them all", now_ns=100 * 33 * MS)
    assert pairing.waiting == 0


def test_recorded_depth_pairs_the_same_stamp_whether_logged_before_or_after_the_colour():
    pairing = DepthPairing(max_delay_s=0.05, wait_s=1.0)
    pairing.add_depth(1_000, "depth of 1000", now_ns=10)
    first = pairing.add_colour(1_000, now_ns=10)
    assert pairing.decided(first, now_ns=10)
    second = pairing.add_colour(2_000, now_ns=20)
    assert not pairing.decided(second, now_ns=20)  # its depth may still come
    pairing.add_depth(2_000, "depth of 2000", now_ns=21)
    assert pairing.decided(second, now_ns=21)
    assert (pairing.take(first), pairing.take(second)) == ("depth of 1000", "depth of 2000")


def test_recorded_depth_takes_the_nearest_within_the_delay_and_gives_up_after_the_wait():
    pairing = DepthPairing(max_delay_s=0.05, wait_s=0.5)
    first = pairing.add_colour(100 * MS, now_ns=100 * MS)
    pairing.add_depth(70 * MS, "30 ms early", now_ns=101 * MS)
    assert not pairing.decided(first, now_ns=101 * MS)
    pairing.add_depth(120 * MS, "20 ms late", now_ns=121 * MS)  # nearer, and covers the colour
    assert pairing.decided(first, now_ns=121 * MS)
    assert pairing.take(first) == "20 ms late"
    second = pairing.add_colour(400 * MS, now_ns=400 * MS)
    assert not pairing.decided(second, now_ns=899 * MS)
    assert pairing.decided(second, now_ns=900 * MS)
    assert pairing.take(second) is None  # nothing within 50 ms

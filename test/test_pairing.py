"""Pairing colour frames with depth frames by stamp: exact, nearest within the delay, in either
arrival order, at different rates, with bounded buffers and a bounded wait."""

from __future__ import annotations

import threading
import time

from fcclip_ros.ros.pairing import DepthBuffer, RecordedDepth

MS = 1_000_000  # nanoseconds


def test_exact_stamp_wins_over_nearer_arrivals():
    depth = DepthBuffer(max_delay_s=0.05)
    for stamp in (100, 133, 166):
        depth.put(stamp * MS, f"depth {stamp}")
    assert depth.match(133 * MS, deadline=time.monotonic()) == "depth 133"


def test_nearest_depth_within_the_delay_pairs_and_beyond_it_none_does():
    depth = DepthBuffer(max_delay_s=0.05)
    for stamp in (100, 200):
        depth.put(stamp * MS, f"depth {stamp}")
    assert depth.match(140 * MS, time.monotonic()) == "depth 100"
    assert depth.match(170 * MS, time.monotonic()) == "depth 200"
    assert depth.match(150 * MS, time.monotonic()) == "depth 200"  # a tie: the later one
    assert depth.match(251 * MS, time.monotonic()) is None  # 51 ms off


def test_depth_arriving_after_its_colour_frame_is_waited_for_until_the_deadline():
    depth = DepthBuffer(max_delay_s=0.05)
    depth.put(100 * MS, "depth 100")
    later = threading.Timer(0.05, lambda: depth.put(130 * MS, "depth 130"))
    later.start()
    start = time.monotonic()
    assert depth.match(130 * MS, deadline=start + 2.0) == "depth 130"
    assert time.monotonic() - start < 1.0  # returned when it came, not at the deadline
    # An older one within the delay is taken once nothing newer came by the deadline.
    start = time.monotonic()
    assert depth.match(160 * MS, deadline=start + 0.1) == "depth 130"
    assert 0.09 < time.monotonic() - start < 1.0


def test_a_newer_depth_ends_the_wait_at_once_with_the_nearest():
    depth = DepthBuffer(max_delay_s=0.05)
    depth.put(100 * MS, "depth 100")
    depth.put(140 * MS, "depth 140")
    start = time.monotonic()
    assert depth.match(125 * MS, deadline=start + 5.0) == "depth 140"
    assert time.monotonic() - start < 0.5


def test_colour_at_30_hz_and_depth_at_15_hz_pair_each_frame_with_the_nearest_depth():
    depth = DepthBuffer(max_delay_s=0.05)
    colour_stamps = [round(i * 1e9 / 30) for i in range(30)]
    depth_stamps = [round(i * 1e9 / 15) + 2 * MS for i in range(15)]  # a 2 ms clock offset
    for stamp in depth_stamps:
        depth.put(stamp, stamp)
    for colour in colour_stamps[-10:]:
        nearest = min(depth_stamps, key=lambda d: abs(d - colour))
        assert depth.match(colour, time.monotonic()) == nearest


def test_the_buffer_is_bounded_and_stop_ends_a_wait():
    depth = DepthBuffer(max_delay_s=0.05, capacity=4)
    for stamp in range(10):
        depth.put(stamp * 10 * MS, stamp)
    assert depth.match(0, time.monotonic()) is None  # evicted
    assert depth.match(90 * MS, time.monotonic()) == 9
    threading.Timer(0.05, depth.stop).start()
    start = time.monotonic()
    assert depth.match(1000 * MS, deadline=None) is None  # would wait forever without stop
    assert time.monotonic() - start < 1.0
    depth.start()
    assert depth.match(90 * MS, time.monotonic()) is None  # start() begins from fresh frames


def test_recorded_depth_pairs_the_same_stamp_whether_logged_before_or_after_the_colour():
    pairing = RecordedDepth(max_delay_s=0.05)
    pairing.add_depth(1_000, "depth of 1000")
    pairing.add_colour(1, 1_000, log_time=10)
    assert pairing.decided(1, log_time_now=10)
    pairing.add_colour(2, 2_000, log_time=20)
    assert not pairing.decided(2, log_time_now=20)  # its depth may still come
    pairing.add_depth(2_000, "depth of 2000")
    assert pairing.decided(2, log_time_now=21)
    assert (pairing.take(1), pairing.take(2)) == ("depth of 1000", "depth of 2000")


def test_recorded_depth_takes_the_nearest_within_the_delay_and_gives_up_after_the_horizon():
    pairing = RecordedDepth(max_delay_s=0.05, horizon_ns=500 * MS)
    pairing.add_colour(1, 100 * MS, log_time=100 * MS)
    pairing.add_depth(70 * MS, "30 ms early")
    assert not pairing.decided(1, log_time_now=101 * MS)
    pairing.add_depth(120 * MS, "20 ms late")  # nearer, and covers the colour stamp
    assert pairing.decided(1, log_time_now=121 * MS)
    assert pairing.take(1) == "20 ms late"
    pairing.add_colour(2, 400 * MS, log_time=400 * MS)
    assert not pairing.decided(2, log_time_now=900 * MS)
    assert pairing.decided(2, log_time_now=901 * MS)
    assert pairing.take(2) is None  # nothing within 50 ms

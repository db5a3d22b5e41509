"""Newest-frame slots and round-robin batches, without DDS."""

from __future__ import annotations

import threading
import time

import pytest

from fcclip_ros.scheduling import FrameScheduler

pytestmark = pytest.mark.fast


def test_a_newer_frame_replaces_the_waiting_one_and_counts_it_as_skipped():
    scheduler = FrameScheduler(cameras=1)
    for frame in ("f1", "f2", "f3"):
        scheduler.put(0, frame)
    assert scheduler.next_batch(timeout=0) == [(0, "f3")]
    assert (scheduler.counts[0].received, scheduler.counts[0].skipped) == (3, 2)
    scheduler.put(0, "f4")  # taken frames are not skipped ones
    assert scheduler.next_batch(timeout=0) == [(0, "f4")]
    assert (scheduler.counts[0].received, scheduler.counts[0].skipped) == (4, 2)
    assert scheduler.counts[0].last_arrival is not None


def test_cameras_are_served_in_turn_however_fast_one_of_them_is():
    scheduler = FrameScheduler(cameras=3)
    served = []
    for step in range(12):
        scheduler.put(0, f"fast{step}")  # a frame every step
        if step % 3 == 0:
            scheduler.put(1, f"slow{step}")  # one every third step
        if step == 0:
            scheduler.put(2, "once")
        [(camera, _)] = scheduler.next_batch(timeout=0)
        served.append(camera)
    assert served[:3] == [0, 1, 2]  # after camera 0, the waiting slow cameras come first
    assert served.count(1) == 4 and served.count(2) == 1  # every frame of the slow ones
    assert scheduler.counts[1].skipped == 0 and scheduler.counts[2].skipped == 0


def test_a_batch_takes_one_frame_per_camera_starting_after_the_last_served():
    scheduler = FrameScheduler(cameras=3, batch_size=2)
    for camera in range(3):
        scheduler.put(camera, f"c{camera}")
    assert scheduler.next_batch(timeout=0) == [(0, "c0"), (1, "c1")]
    scheduler.put(0, "c0b")
    assert scheduler.next_batch(timeout=0) == [(2, "c2"), (0, "c0b")]
    assert scheduler.next_batch(timeout=0) == []
    assert FrameScheduler(cameras=1, batch_size=4).batch_size == 1


def test_stop_wakes_a_waiting_worker_and_start_serves_only_fresh_frames():
    scheduler = FrameScheduler(cameras=2)
    got = []
    worker = threading.Thread(target=lambda: got.append(scheduler.next_batch()))
    worker.start()
    time.sleep(0.1)
    started = time.monotonic()
    scheduler.stop()
    worker.join(timeout=5)
    assert got == [[]] and time.monotonic() - started < 1.0
    scheduler.put(1, "while stopped")
    assert scheduler.next_batch(timeout=0) == []
    scheduler.start()
    assert scheduler.next_batch(timeout=0.01) == []  # the old frame was dropped
    scheduler.put(1, "fresh")
    assert scheduler.next_batch(timeout=0) == [(1, "fresh")]


def test_waiting_ends_when_a_frame_arrives_or_the_timeout_passes():
    scheduler = FrameScheduler(cameras=1)
    started = time.monotonic()
    assert scheduler.next_batch(timeout=0.2) == []
    assert 0.15 < time.monotonic() - started < 2.0
    threading.Timer(0.1, scheduler.put, args=(0, "late")).start()
    assert scheduler.next_batch(timeout=5) == [(0, "late")]


def test_a_scheduler_needs_a_camera():
    with pytest.raises(ValueError, match="at least one camera"):
        FrameScheduler(cameras=0)

"""Shared test set-up: an isolated DDS domain per test session and an rclpy context fixture."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from helpers.ros_harness import RosHarness

# Chosen before any rclpy context exists, and inherited by every process a test starts, so that
# parallel test sessions on one machine never see each other's topics.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("FCCLIP_TEST_DOMAIN_ID", str(random.randint(1, 101)))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"


@pytest.fixture
def ros(request: pytest.FixtureRequest) -> Iterator[RosHarness]:
    """A RosHarness named after the test, torn down after it."""
    harness = RosHarness("test_" + re.sub(r"\W", "_", request.node.name)[:50])
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def spawn() -> Iterator:
    """Start Python scripts as separate processes; all are stopped after the test."""
    processes: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()

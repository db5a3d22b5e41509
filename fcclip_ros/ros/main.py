"""The segmenter's process: start the node, spin it, and end promptly on a signal.

`ros2 run fcclip_ros segmenter`, `fcclip-ros run` and `python -m fcclip_ros.ros.main` start here.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from fcclip_ros.engine import EngineError
from fcclip_ros.ros.node import NODE_NAME, SegmenterNode
from fcclip_ros.ros.parameters import ConfigurationError
from fcclip_ros.vocabulary import VocabularyError

GIL_SWITCH_INTERVAL_S = 0.0005  # see run()


def _on_signals(handler: Any) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def run(argv: Sequence[str] | None = None) -> int:
    """Start the node with ROS arguments `argv` and spin until Ctrl-C; returns the exit code.

    With autostart (the default) the node configures and activates itself, and a failure there
    ends the process with the reason (exit 1). Signals: until the node is up, Ctrl-C aborts the
    start-up (KeyboardInterrupt). After that SIGINT or SIGTERM only asks the main thread to
    stop, and during teardown further signals are ignored (`ros2 launch` without a terminal
    forwards SIGINT a second time), so teardown always ends within ros2 launch's grace period
    (5 s before it escalates to SIGTERM). A lifecycle `shutdown` ends the process too.
    """
    # The inference thread and the executor threads hand the GIL back and forth on every torch
    # op and every message; at Python's default 5 ms each hand-over can stall for that long.
    # With 0.5 ms the test scenario (tiny model, 30 + 10 Hz cameras, 2 cores) went from 7 to
    # 19 frames/s out and from 13 to 33 frames/s taken in.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    args = list(argv) if argv is not None else sys.argv
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except RuntimeError as error:  # rcl's RCLError: a malformed -p or params file
        reason = str(error).split(", at /")[0].strip()  # drop rcl's source locations
        print(f"[{NODE_NAME}] cannot start: {reason}", file=sys.stderr)
        return 2
    node: SegmenterNode | None = None
    executor: MultiThreadedExecutor | None = None
    code = 0
    try:
        node = SegmenterNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        if node.get_parameter("autostart").value:
            _start(node)
        _on_signals(lambda *_: node.exit_requested.set())
        spinner = threading.Thread(
            target=_spin, args=(executor, node.exit_requested, node.get_logger()),
            name="fcclip-executor", daemon=True)
        spinner.start()
        while not node.exit_requested.wait(timeout=0.2):
            pass
    except KeyboardInterrupt:
        pass
    except (ConfigurationError, EngineError, VocabularyError, ParameterException) as error:
        print(f"[{NODE_NAME}] cannot start: {error}", file=sys.stderr)
        code = 1
    finally:
        _on_signals(signal.SIG_IGN)
        abandoned = node is not None and not node.stop_processing()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            if abandoned:
                node.get_logger().warning("stopped during a slow network stage or a vocabulary "
                                          "encoding: that work is abandoned")
            node.destroy_node()
        rclpy.try_shutdown()
    if abandoned:  # a thread is inside torch: leave without finalising the interpreter
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _start(node: SegmenterNode) -> None:
    """autostart: configure, then activate; a failure is a start-up error."""
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        raise ConfigurationError(node.configure_error or "configure failed (see the log)")
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        raise ConfigurationError("activate failed (see the log)")


def _spin(executor: MultiThreadedExecutor, done: threading.Event, logger: Any) -> None:
    """Spin until shutdown. rclpy re-raises a callback's exception in the spinning thread
    (MultiThreadedExecutor), which would end spinning and with it every service, the lifecycle
    ones included: such an exception is logged and spinning goes on."""
    try:
        while not done.is_set():
            try:
                executor.spin()
                return
            except ExternalShutdownException:
                return
            except Exception as error:
                logger.error(f"a callback raised {type(error).__name__}: {error}; "
                             "the node goes on")
    finally:
        done.set()


def main() -> None:
    """Entry point of `ros2 run fcclip_ros segmenter` and `python -m fcclip_ros.ros.main`."""
    sys.exit(run())


if __name__ == "__main__":
    main()

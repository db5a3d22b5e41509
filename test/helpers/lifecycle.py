"""What a lifecycle manager (Nav2's, or `ros2 lifecycle set`) does to a managed node over DDS."""

from __future__ import annotations

import time
from typing import Any

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState

from helpers.node_process import NodeProcess, Peer


class LifecycleClient:
    """What a lifecycle manager does: ask for transitions, read the state."""

    def __init__(self, peer: Peer, node: str) -> None:
        self.peer = peer
        self.change = peer.node.create_client(ChangeState, f"{node}/change_state")
        self.get = peer.node.create_client(GetState, f"{node}/get_state")
        self.node: NodeProcess | None = None  # its log goes with a failure

    def wait(self, node: NodeProcess, timeout: float = 60.0) -> None:
        """Until both services are discovered and matched: a request sent the moment a server
        is discovered can be lost while its endpoints still match (then it is never answered)."""
        self.node = node
        deadline = time.monotonic() + timeout
        for client in (self.change, self.get):
            while not client.wait_for_service(timeout_sec=0.5):
                assert node.process.poll() is None, "node exited:\n" + node.output()
                assert time.monotonic() < deadline, "no lifecycle services:\n" + node.output()
        self.peer.spin_for(1.0)

    def state(self) -> str:
        return self._call(self.get, GetState.Request(), 30.0).current_state.label

    def transition(self, transition_id: int, timeout: float = 120.0) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self._call(self.change, request, timeout).success

    def _call(self, client: Any, request: Any, timeout: float) -> Any:
        try:
            return self.peer.call(client, request, timeout)
        except AssertionError as error:
            if self.node is None:
                raise
            alive = "running" if self.node.process.poll() is None else (
                f"exited with {self.node.process.returncode}")
            raise AssertionError(f"{error}; the node is {alive}; its log:\n"
                                 f"{self.node.output()}") from None

"""What a lifecycle manager (Nav2's, or `ros2 lifecycle set`) does to a managed node over DDS."""

from __future__ import annotations

import time

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState

from helpers.node_process import NodeProcess, Peer


class LifecycleClient:
    """What a lifecycle manager does: ask for transitions, read the state."""

    def __init__(self, peer: Peer, node: str) -> None:
        self.peer = peer
        self.change = peer.node.create_client(ChangeState, f"{node}/change_state")
        self.get = peer.node.create_client(GetState, f"{node}/get_state")

    def wait(self, node: NodeProcess, timeout: float = 60.0) -> None:
        """Until both services are discovered and matched: a request sent the moment a server
        is discovered can be lost while its endpoints still match (then it is never answered)."""
        deadline = time.monotonic() + timeout
        for client in (self.change, self.get):
            while not client.wait_for_service(timeout_sec=0.5):
                assert node.process.poll() is None, "node exited:\n" + node.output()
                assert time.monotonic() < deadline, "no lifecycle services:\n" + node.output()
        self.peer.spin_for(1.0)

    def state(self) -> str:
        return self.peer.call(self.get, GetState.Request()).current_state.label

    def transition(self, transition_id: int, timeout: float = 120.0) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.peer.call(self.change, request, timeout).success

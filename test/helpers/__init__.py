"""What several test modules share: test data, reference implementations, the node in its own
process and a DDS peer to talk to it, and the scripts tests start as separate processes.

Test modules import from here (`from helpers.rgbd_frame import ARC`), never from each other.
"""

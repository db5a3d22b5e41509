"""`fcclip-ros bag`: every image frame of a recorded rosbag2 MCAP through the engine, into a new
bag that holds every input message and, after each frame, the node's outputs for it.

reader (the recording, in log order, damage detected), writer (the output folder), resume
(progress and the recovery of a failed or killed run), job (the run: frames through the shared
frame pipeline).
"""

from fcclip_ros.ros.bag.job import BagJob, BagOptions, BagReport
from fcclip_ros.ros.bag.reader import BagDamageError, BagError

__all__ = ["BagDamageError", "BagError", "BagJob", "BagOptions", "BagReport"]

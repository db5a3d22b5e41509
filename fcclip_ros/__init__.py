"""FC-CLIP open-vocabulary panoptic segmentation for ROS 2.

The generated message and service modules (``fcclip_ros.msg``, ``fcclip_ros.srv``) live beside
this package in a colcon install; in a development venv they are installed into site-packages,
and extend_path lets this package find them there.
"""

import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)

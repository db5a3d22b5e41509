"""pip install of the fcclip_ros Python package (the ROS-free core, the node and the CLI).

Inside a ROS 2 workspace, colcon builds the package through CMakeLists.txt instead, which also
generates the msg/srv interfaces.
"""

from setuptools import find_packages, setup

setup(
    name="fcclip_ros",
    version="0.1.0",
    description="Open-vocabulary panoptic segmentation for ROS 2 with FC-CLIP",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["fcclip_ros", "fcclip_ros.*"]),
    package_data={"fcclip_ros": ["presets/*.txt"]},
    install_requires=[
        "numpy",
        "opencv-python-headless",
        "pillow",
        "pyyaml",
        "torch>=2.6",  # checkpoint loading names numpy types in torch.serialization.safe_globals
        "open_clip_torch>=2.26",
        "scipy",  # the tracker's assignment (linear_sum_assignment)
    ],
    extras_require={
        "bag": ["mcap>=1.5", "mcap-ros2-support>=0.5", "tqdm"],  # 1.5: Writer.flush
        # `fcclip-ros bag --ray`: the bags on a Ray cluster (actors, max_concurrency, SPREAD)
        "ray": ["mcap>=1.5", "mcap-ros2-support>=0.5", "tqdm", "ray>=2.10"],
    },
    entry_points={"console_scripts": ["fcclip-ros = fcclip_ros.cli:main"]},
)

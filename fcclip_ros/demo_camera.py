"""`python -m fcclip_ros.demo_camera`: the sample camera and watcher of `make demo`, kept at this
name for scripts that start it so; the code is fcclip_ros.ros.demo_camera."""

from fcclip_ros.ros.demo_camera import main

if __name__ == "__main__":
    main()

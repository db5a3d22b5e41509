"""The ROS 2 layer: everything that needs a ROS 2 install (rclpy, the message packages, their
definitions on disk). The core (engine, vocabulary, model, frame pipeline) never imports from
here."""

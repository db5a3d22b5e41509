"""The ROS 2 layer: everything that imports rclpy. The core (engine, vocabulary, model) never
imports from here."""

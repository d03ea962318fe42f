"""Interoperation with other robotics tools: LeRobot datasets and robots, torchvision on CPU torch."""

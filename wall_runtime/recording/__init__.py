"""Recording what the control loop does: the recorder protocol and the LeRobot v3 dataset writer."""

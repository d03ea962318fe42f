"""The checkpoint's action and state spaces, and the edge that converts them to the robot's joints.

- :mod:`.rotations`: spec §11's Euler / 6D / relative-composition conventions (the only place)
- :mod:`.layout`: ``dof_config`` / ``agent_pos_config`` read by key name into typed slots
- :mod:`.mapping`: robot.yaml's ``model:`` block (robot parts onto slots by name)
- :mod:`.ee_safety`: workspace box and EE speed limits on EE targets, before IK
- :mod:`.edge`: :class:`ModelEdge`, state out / chunk in / RTC hint back
- :mod:`.source`: the edge in front of the control loop (a chunk source and an observation provider)
"""

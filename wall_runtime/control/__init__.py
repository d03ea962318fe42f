"""Robot-side control runtime: from a stream of action chunks to safe, smooth motion.

- ``scheduler``  timestamped chunk scheduling, splice blends, request policy (``ChunkScheduler``)
- ``latency``    p95 round-trip estimate that ignores warm-up (``LatencyEstimator``)
- ``plan``       timed waypoints, cubic interpolation at the control rate (``TimedPlan``)
- ``smoothing``  none / crossfade / ACT temporal ensembling / RTC hint (``make_smoother``)
- ``seams``      jump, velocity, acceleration, jerk at each chunk boundary (``seam_metrics``)
- ``safety``     the filter chain, on by default: the stateful shell the loop holds (``SafetyChain``)
- ``safety_config``  the ``safety:`` block, parsed once and checked satisfiable (``SafetyConfig``)
- ``safety_solver``  one tick of the chain as a pure function of limits, state, target, dt (``solve``)
- ``limits``     ros2_control ``joint_limits`` schema (``parse_joint_limits``)
- ``watchdog``   no valid target within the timeout → hold (``Watchdog``)
- ``estop``      latched e-stop from signal, key, file, socket, hardware (``EStop``)
- ``loop``       fixed-rate loop on absolute deadlines (``ControlLoop``, ``ChunkSource``)
- ``dryrun``     first-order simulated robot and policy for dry runs (``FirstOrderRobot``)
- ``report``     run summary JSON and trajectory plot
- ``commands``   ``wall-runtime run``
"""

"""The pick-cube task now lives in :mod:`wall_runtime.sims.pick_cube` (with the other simulated
tasks); this name stays for the recorder, the trainer's eval and older scripts."""

from wall_runtime.sims.pick_cube import (  # noqa: F401
    ARM_JOINTS,
    COLOURS,
    CONTROL_HZ,
    CUBE_HALF,
    DOF_CONFIG,
    GRASP_PITCH,
    GRIPPER_M,
    HOME,
    LIFT_M,
    PHYSICS_DT,
    VIEWS,
    Episode,
    PickCubeEnv,
    ScriptedExpert,
    StepInfo,
    euler_from_matrix,
    expert_plan,
    instruction_for,
    matrix_from_euler,
    run_expert_episode,
)

"""Third-party simulated tasks the runtime drives as robots, with their own success criteria.

``aloha``: gym-aloha's bimanual ViperX tasks (transfer-cube), driven in joint space through
``dm_control.mujoco.Physics`` with the task's own ``initialize_episode`` / ``get_reward``;
``clock``: the simulated clock (physics advances only when the control loop waits);
``aloha_expert``: a scripted expert for transfer-cube from the task's privileged state;
``pick_cube``: the project's own language-conditioned pick task (its scene, scripted expert and
``PickCubeTask`` robot: the colour named per seed, success from the physics).
"""

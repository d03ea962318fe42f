"""Feetech (SO-100) and Dynamixel (Koch) adapters against bus emulators on pseudo-terminals.

The emulators run in their own process and speak the real wire protocols; the adapters use the
vendor SDKs on the pty exactly as on /dev/ttyUSB0.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from wall_runtime.adapters.checks import run_checks
from wall_runtime.adapters.config import load_robot
from wall_runtime.adapters.emulators import dynamixel as dxl_emu
from wall_runtime.adapters.emulators import emulated
from wall_runtime.adapters.emulators import feetech as ft_emu
from wall_runtime.adapters.registry import build_adapter
from wall_runtime.robot import RobotFaultError, RobotLinkError

ROBOTS = Path(__file__).resolve().parents[1] / "robots"
TICK = 2 * math.pi / 4096
GOAL = {"so100": (42, 2), "koch": (116, 4)}


# -- wire format ----------------------------------------------------------------------------------


def test_feetech_framing_checksum_and_resync() -> None:
    pkt = ft_emu.encode_packet(3, ft_emu.READ, bytes([56, 2]))
    assert pkt == bytes([0xFF, 0xFF, 3, 4, 2, 56, 2, (~(3 + 4 + 2 + 56 + 2)) & 0xFF])
    bus = ft_emu.FeetechBusEmulator([ft_emu.FeetechServo(3)])
    try:
        corrupt = bytearray(pkt)
        corrupt[-1] ^= 0xFF
        buf = bytearray(b"\x00\x13\xff" + bytes(corrupt) + pkt)  # line noise, a bad packet, a good one
        got = bus.take_packet(buf)
        assert (got.id, got.instr, got.params) == (3, ft_emu.READ, bytes([56, 2]))
        assert bus.bad_checksums == 1 and not buf
    finally:
        bus.stop()


def test_dynamixel_crc_matches_the_sdk_and_stuffing_round_trips() -> None:
    import dynamixel_sdk

    ph = dynamixel_sdk.PacketHandler(2.0)
    for payload in (b"", bytes([0xFF, 0xFF, 0xFD, 0x01]), bytes(range(40))):
        pkt = dxl_emu.encode_packet(7, dxl_emu.STATUS, payload, error=0)
        assert dxl_emu.crc16(pkt[:-2]) == ph.updateCRC(0, list(pkt), len(pkt) - 2)
    body = bytes([0x55, 0, 0xFF, 0xFF, 0xFD, 0x02])
    assert dxl_emu.stuff(body) == bytes([0x55, 0, 0xFF, 0xFF, 0xFD, 0xFD, 0x02])
    assert dxl_emu.unstuff(dxl_emu.stuff(body)) == body
    bus = dxl_emu.DynamixelBusEmulator([dxl_emu.DynamixelServo(1)])
    try:
        pkt = bytearray(dxl_emu.encode_packet(1, dxl_emu.WRITE, bytes([116, 0, 0xFF, 0xFF, 0xFD, 0])))
        got = bus.take_packet(bytearray(b"\xff\x00") + pkt)
        assert got.crc_ok and got.params == bytes([116, 0, 0xFF, 0xFF, 0xFD, 0])
        pkt[-1] ^= 1
        assert not bus.take_packet(pkt).crc_ok
    finally:
        bus.stop()


# -- adapters over the pty ------------------------------------------------------------------------


@pytest.fixture(params=["so100", "koch"])
def bus_robot(request):
    name = request.param
    with emulated(load_robot(ROBOTS / name)) as (cfg, emulators):
        robot = build_adapter(cfg)
        yield name, robot, emulators["arm"]
        if robot.is_connected:
            robot.disconnect()


def test_reads_and_sync_writes_in_servo_ticks(bus_robot) -> None:
    name, robot, bus = bus_robot
    bus.set(1, "position", 2048 + 512)  # shoulder_pan a quarter of a half turn up
    robot.connect()
    state = robot.read_state()
    assert state.position[0] == pytest.approx(512 * TICK, abs=1e-9)
    # connect wrote goal = present before enabling torque: nothing jumped
    addr, size = GOAL[name]
    assert bus.register(1, addr, size) == 2048 + 512
    assert bus.get(1, "torque")
    target = state.position.copy()
    target[:3] = [0.3, -0.2, 0.1]
    robot.command(target)
    assert robot.read_state() is not None  # the sync write needs no answer; a read follows it
    for sid, rad in zip((1, 2, 3), (0.3, -0.2, 0.1), strict=True):
        assert bus.register(sid, addr, size) == 2048 + round(rad / TICK)


def test_commands_are_clamped_to_the_joint_limits_in_ticks(bus_robot) -> None:
    name, robot, bus = bus_robot
    robot.connect()
    target = robot.read_state().position
    target[0] = 10.0  # far past shoulder_pan's 1.9 rad
    robot.command(target)
    robot.read_state()
    addr, size = GOAL[name]
    assert bus.register(1, addr, size) == 2048 + round(1.9 / TICK)


def test_a_servo_that_stops_answering_raises_a_clear_error_and_the_arm_holds(bus_robot) -> None:
    name, robot, bus = bus_robot
    robot.connect()
    before = robot.read_state().position
    bus.set(3, "silent", True)
    with pytest.raises(RobotLinkError, match=r"elbow_flex \(id 3\) did not answer"):
        robot.read_state()
    # hold() must still work: the answering servos are held where they are now, the silent one
    # where it was last seen
    target = before.copy()
    target[0] += 0.5
    robot.command(target)
    time.sleep(0.05)
    robot.hold()
    time.sleep(0.05)  # the sync write has no answer; let it cross the pty before asking the servo
    addr, size = GOAL[name]
    goal = bus.register(1, addr, size)
    assert 2048 < goal <= 2048 + round(0.5 / TICK)  # held where it got to, not sent back
    time.sleep(0.2)
    assert bus.register(1, addr, size) == goal
    assert abs(bus.get(1, "position") - goal) < 1.0
    for sid in (2, 4, 5, 6):
        assert bus.register(sid, addr, size) == 2048 + round(before[sid - 1] / TICK)
    # the servo comes back: reconnecting restores the link
    bus.set(3, "silent", False)
    robot.connect()
    held = before.copy()
    held[0] = (goal - 2048) * TICK
    assert robot.read_state().position == pytest.approx(held, abs=2 * TICK)


def test_a_missing_servo_fails_connect_naming_it(bus_robot) -> None:
    _, robot, bus = bus_robot
    bus.set(5, "silent", True)
    with pytest.raises(RobotLinkError, match=r"wrist_roll \(id 5\)"):
        robot.connect()
    assert not robot.is_connected


def test_a_missing_port_is_a_clear_link_error() -> None:
    cfg = load_robot(ROBOTS / "so100")
    robot = build_adapter(cfg)
    with pytest.raises(RobotLinkError, match="cannot open /dev/ttyACM0"):
        robot.connect()


def test_feetech_error_bits_are_decoded() -> None:
    with emulated(load_robot(ROBOTS / "so100")) as (cfg, emulators):
        robot = build_adapter(cfg)
        robot.connect()
        try:
            emulators["arm"].set(2, "error_bits", ft_emu.ERR_OVERLOAD | ft_emu.ERR_OVERHEAT)
            with pytest.raises(RobotFaultError, match=r"shoulder_lift \(id 2\): overheat, overload"):
                robot.read_state()
            emulators["arm"].set(2, "error_bits", 0)
            assert robot.read_state().position.shape == (6,)
        finally:
            robot.disconnect()


def test_dynamixel_hardware_alert_reads_the_hardware_error_status() -> None:
    with emulated(load_robot(ROBOTS / "koch")) as (cfg, emulators):
        robot = build_adapter(cfg)
        robot.connect()
        try:
            emulators["arm"].set(4, "hardware_error", 0x20 | 0x04)
            with pytest.raises(
                RobotFaultError, match=r"wrist_flex \(id 4\): hardware alert: overheating, overload"
            ):
                robot.read_state()
        finally:
            robot.disconnect()


# koch: tests/test_robot_walkthrough.py runs the same kit on it, from the doc's robot.yaml
@pytest.mark.parametrize("name", ["so100"])
def test_bus_arms_pass_check_robot_on_the_emulator(name: str) -> None:
    with emulated(load_robot(ROBOTS / name)) as (cfg, _):
        results = run_checks(build_adapter(cfg))
    by_name = {r.name: r for r in results}
    # Timing is measured on a shared 2-core machine; it is reported, the contract is asserted.
    failed = [(r.name, r.detail) for r in results if not r.passed and r.name != "timing"]
    assert not failed
    assert by_name["limits"].figures["worst_excursion"] <= 1.5 * TICK
    assert np.isfinite(by_name["timing"].figures["read_p99_ms"])


@pytest.mark.hardware
@pytest.mark.parametrize(
    ("name", "env"), [("so100", "WALL_RUNTIME_SO100_PORT"), ("koch", "WALL_RUNTIME_KOCH_PORT")]
)
def test_real_bus_arm_passes_check_robot_at_reduced_speed(name: str, env: str) -> None:
    import os
    from dataclasses import replace

    from wall_runtime.adapters.checks import CheckOptions

    port = os.environ.get(env)
    if not port:
        pytest.skip(f"set {env} to the arm's serial port")
    cfg = load_robot(ROBOTS / name)
    cfg = replace(cfg, parts=(replace(cfg.parts[0], connection={**cfg.parts[0].connection, "port": port}),))
    results = run_checks(build_adapter(cfg), CheckOptions(speed_scale=0.25, hardware=True, settle_s=3.0))
    assert not [(r.name, r.detail) for r in results if not r.passed]


def test_dynamixel_puts_a_servo_left_in_velocity_mode_back_into_position_mode() -> None:
    with emulated(load_robot(ROBOTS / "koch")) as (cfg, emulators):
        bus = emulators["arm"]
        bus.poke(2, 11, 1, 1)  # another program left servo 2 in velocity mode
        robot = build_adapter(cfg)
        robot.connect()
        try:
            assert bus.register(2, 11, 1) == 3
            target = robot.read_state().position
            target[1] = 0.3
            robot.command(target)
            assert _wait_until(lambda: abs(robot.read_state().position[1] - 0.3) < 2 * TICK)
        finally:
            robot.disconnect()


def _wait_until(pred, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False

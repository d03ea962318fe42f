"""Servo-bus emulators on pseudo-terminals, speaking the real wire protocols.

They stand in for the *servos*, not for the adapter under test: the adapter opens the pty's
slave path with the vendor SDK exactly as it opens ``/dev/ttyUSB0``, and every byte crosses a
real tty. Faults are injectable per servo: stop answering, report error bits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

from wall_runtime.adapters.config import RobotConfig

EMULATED_PART_TYPES = ("feetech", "dynamixel", "piper", "agilex_base")


@contextlib.contextmanager
def emulated(config: RobotConfig) -> Iterator[tuple[RobotConfig, dict[str, object]]]:
    """Start an emulator per emulated part: a process per serial bus (servos at the joints' zero
    or the nearest limit), a device thread on python-can's virtual bus per CAN part.

    Yields the config with each part's ``port`` / ``channel`` pointed at its emulator, and the
    emulators by part name (to inject faults).
    """
    import uuid

    from wall_runtime.adapters.emulators import dynamixel, feetech
    from wall_runtime.adapters.emulators.can_devices import AgilexBaseDevice, PiperArmDevice

    kinds = {"feetech": feetech.start_process, "dynamixel": dynamixel.start_process}
    emulators: dict[str, object] = {}
    parts = []
    with contextlib.ExitStack() as stack:
        for part in config.parts:
            if part.type in ("piper", "agilex_base"):
                channel = f"wall-runtime-emulated-{uuid.uuid4().hex[:8]}"
                device_cls = PiperArmDevice if part.type == "piper" else AgilexBaseDevice
                emulators[part.name] = stack.enter_context(device_cls(channel))
                # The device is a Python thread sharing this process's GIL: a little more patience
                # before feedback counts as stale than a real 200 Hz CAN device needs.
                conn = {
                    **part.connection,
                    "channel": channel,
                    "interface": "virtual",
                    "feedback_timeout_s": 0.3,
                }
                parts.append(replace(part, connection=conn))
                continue
            if part.type not in kinds:
                parts.append(part)
                continue
            conn = part.connection
            servos = []
            for jn in part.joints:
                joint = next(j for j in config.joints if j.name == jn)
                zero = min(max(0.0, joint.limits.lower), joint.limits.upper)
                offset = conn.get("offsets", {}).get(jn, 2048)
                direction = conn.get("directions", {}).get(jn, 1)
                ticks = offset + direction * zero / (2 * 3.141592653589793) * 4096
                servos.append({"id": conn["ids"][jn], "position": float(round(ticks))})
            bus = kinds[part.type](servos)
            stack.enter_context(bus)
            emulators[part.name] = bus
            # An emulator is a Python process on a possibly busy machine, not a servo answering in
            # microseconds: give it the patience of a long cable.
            parts.append(replace(part, connection={**conn, "port": bus.port, "timeout_margin_ms": 100}))
        yield replace(config, parts=tuple(parts)), emulators

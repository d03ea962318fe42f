"""``python -m wall_runtime.adapters.emulators.serve PROTOCOL SERVOS_JSON``: one bus in a process.

Prints the pty path as the first JSON line, then answers JSON-line fault commands on stdin.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    protocol, servo_args = sys.argv[1], json.loads(sys.argv[2])
    if protocol == "feetech":
        from wall_runtime.adapters.emulators.feetech import make_bus
    elif protocol == "dynamixel":
        from wall_runtime.adapters.emulators.dynamixel import make_bus
    else:
        raise SystemExit(f"unknown protocol {protocol!r} (feetech, dynamixel)")
    bus = make_bus(servo_args)
    print(json.dumps(bus.port), flush=True)
    try:
        bus._run(control=sys.stdin.fileno())
    finally:
        bus.stop()
        os._exit(0)


if __name__ == "__main__":
    main()

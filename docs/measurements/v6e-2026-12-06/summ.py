"""The compile check's --json output (stdin) as one line per bisection step (see run.sh)."""

import json
import sys

try:
    report = json.loads(sys.stdin.read())
except ValueError as error:
    print("no json", repr(error)[:100])
    sys.exit()
parts = []
for s in report["steps"]:
    part = f"{s['step']}: {s['status']}"
    if "signal" in s:
        part += f" signal {s['signal']}"
    if "total_bytes" in s:
        part += (
            f" {s['total_bytes'] / 2**30:.2f} GiB (temp {s['temp_bytes'] / 2**30:.2f}, params+opt "
            f"{s['params_and_optimizer_bytes'] / 2**30:.2f}) fits={s['fits']} "
            f"{s['compile_seconds']:.0f}s/{s['compile_cpu_seconds']:.0f}s CPU"
        )
    if s["status"] not in ("compiled", "crashed"):
        part += " " + s.get("error", "")[:200]
    parts.append(part)
print("; ".join(parts))

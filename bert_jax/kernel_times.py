r"""Device time per kernel from a `jax.profiler` trace: where a step's time goes, as a text table.

    python -m bert_jax.kernel_times TRACE_DIR_OR_FILE --steps=3 [--top=40] [--hlo=OPTIMIZED_HLO.txt(.gz)]

Reads the Perfetto/Chrome JSON that `jax.profiler.trace(dir, create_perfetto_trace=True)` writes
(`**/*.trace.json.gz`). Kernels are the complete events ("ph": "X") on the accelerator's stream threads
("Stream #N"); the "XLA Ops"/"XLA Modules" threads of the same device repeat those spans one level up and
are left out, so nothing is counted twice. Without an accelerator in the trace, the host's XLA events are
tabulated instead (a CPU run), which is what the CPU test reads.

With `--hlo` (the optimized HLO text that `--xla_dump_to` writes, as `gpu_matrix --profile` keeps it), each XLA
fusion is annotated with the JAX operation it came from (its `op_name`: "fwd"/"bwd" and the module path), so a
row like `input_add_reduce_fusion_9` reads `bwd bert/layer_11/intermediate/reduce_sum`. Library kernels (cuBLAS
`nvjet_*`, cuDNN) have no fusion name and stay unannotated.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
from pathlib import Path

_HLO_LINE = re.compile(r'^\s*(?:ROOT\s+)?%([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"')
_JIT = re.compile(r"^jit\([^)]*\)/")
_BACKWARD = re.compile(r"transpose\(jvp\(\w+\)\)/")
_FORWARD = re.compile(r"jvp\(\w+\)/")


def hlo_op_names(path: str | Path) -> dict[str, str]:
    """{kernel name: "fwd|bwd op path"} from optimized HLO text; a fusion `a_b.9` launches kernel `a_b_9`."""
    path = Path(path)
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
        names = {}
        for line in f:
            match = _HLO_LINE.match(line)
            if match:
                op = _FORWARD.sub("fwd ", _BACKWARD.sub("bwd ", _JIT.sub("", match.group(2))))
                names[re.sub(r"[.\-]", "_", match.group(1))] = op
    return names


def find_trace(path: str | Path) -> Path:
    """The newest `*.trace.json.gz` at or under `path`."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no *.trace.json.gz under {path}")
    return found[-1]


def load_events(path: Path) -> tuple[list[dict], dict, dict]:
    """(complete events, {pid: process name}, {(pid, tid): thread name})."""
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            processes[e["pid"]] = e.get("args", {}).get("name", "")
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    return complete, processes, threads


def kernel_events(events, processes, threads) -> tuple[list[dict], str]:
    """(the events to tabulate, a phrase saying which they are)."""
    # Accelerators only: a CPU run's trace can hold other "/device:" lines (libtpu's "/device:CUSTOM:...").
    devices = {pid for pid, name in processes.items() if re.search(r"/device:(GPU|TPU):", name)}
    if any(e["pid"] in devices for e in events):
        streams = [
            e
            for e in events
            if e["pid"] in devices
            and threads.get((e["pid"], e.get("tid")), "").startswith("Stream")
        ]
        if streams:
            return streams, "kernels on the device streams"
        ops = [
            e
            for e in events
            if e["pid"] in devices and "Module" not in threads.get((e["pid"], e.get("tid")), "")
        ]
        return ops, "device events (no stream threads in this trace)"
    hosts = {pid for pid, name in processes.items() if "host" in name.lower()}
    xla = [
        e
        for e in events
        if e["pid"] in hosts and (e.get("args", {}).get("hlo_op") or "fusion" in e.get("name", ""))
    ]
    return xla, "host XLA events (no accelerator in this trace)"


def table(path, steps: int = 1, top: int = 40, hlo: str | Path | None = None) -> str:
    """The text table: total kernel time per step, then the `top` kernels by time per step (annotated with
    their JAX operations when `hlo` is given)."""
    ops = hlo_op_names(hlo) if hlo else {}
    trace = find_trace(path)
    events, processes, threads = load_events(trace)
    kernels, what = kernel_events(events, processes, threads)
    totals = collections.defaultdict(float)
    counts = collections.Counter()
    for e in kernels:
        totals[e["name"]] += e["dur"]
        counts[e["name"]] += 1
    total_ms = sum(totals.values()) / 1e3 / steps
    lines = [
        f"{trace.name}: {what}",
        f"time per step {total_ms:.2f} ms over {sum(counts.values()) / steps:.0f} events "
        f"({len(totals)} distinct), {steps} step(s) traced",
        f"{'ms/step':>9} {'share':>6} {'calls':>6}  name",
    ]
    for name, us in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        ms = us / 1e3 / steps
        share = ms / total_ms if total_ms else 0.0
        calls = counts[name] / steps
        calls = f"{calls:6.0f}" if calls.is_integer() else f"{calls:6.1f}"
        # GPU kernels are named like their fusion with "_" for "."; CPU events keep the HLO name.
        op = ops.get(re.sub(r"[.\-]", "_", name))
        where = f"  <- {op[:100]}" if op else ""
        lines.append(f"{ms:9.3f} {share:6.1%} {calls}  {name[:110]}{where}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", help="A trace file or a folder holding one (newest wins).")
    parser.add_argument("--steps", type=int, default=1, help="Steps the trace holds.")
    parser.add_argument("--top", type=int, default=40, help="Rows to print.")
    parser.add_argument(
        "--hlo", default=None, help="Optimized HLO text (.txt or .txt.gz) to annotate with."
    )
    args = parser.parse_args(argv)
    print(table(args.trace, args.steps, args.top, args.hlo))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Ahead-of-time compile check for a Cloud TPU topology, on a machine with no TPU.

    python -m bert_jax.compile --config=configs/bert_large.py --topology=v5e-16 [--json] [--num_slices=2] \
        [--config.mesh_shape='(1,16,1)'] [--config.model.remat_policy=dots] [--config.dtype=bfloat16]

libtpu (the `[tpu]` extra) describes the topology's chips (`jax.experimental.topologies`); the program
`pretrain.run` trains with (`bert_jax.program.build`), its train step at the phase-1 and phase-2 shapes and its
eval step, is lowered and compiled for them, and for each the per-chip memory (parameters + optimizer state, temporaries, total against the chip's HBM), the compiled
against the counted model FLOPs and the collectives in the compiled HLO are printed. Exit status 1 if a step
does not fit or does not compile.

Each program is compiled in a child process (this module again, `--programs=ONE --json --noisolate`), its
stderr kept in LOG_DIR/PROGRAM.log: a compiler that crashes (a segmentation fault inside libtpu) or is killed
for memory costs one line, `train phase 2 (length 512): the TPU compiler crashed (signal 11); see LOG`, and
the other programs are still reported. `--noisolate` compiles in this process (what each child does).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import signal
import sys
import tempfile
import time

import jax
from absl import app, flags, logging

from bert_jax import compile_child, main, run_setup, train_lib
from bert_jax import program as program_lib
from bert_jax.topologies import (  # noqa: F401 -- the slice names, as compile.parse_topology etc.
    GENERATIONS,
    VALID_FORMS,
    GiB,
    Topology,
    parse_topology,
    topology_devices,
)

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


# ----------------------------------------------------------------------------------------------------------
# Compiling the steps.
# ----------------------------------------------------------------------------------------------------------
def _bytes_per_device(tree) -> int:
    """Bytes one device holds of a tree of sharded `jax.ShapeDtypeStruct`s."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Instructions of each collective in compiled HLO text (an async -start/-done pair counts once)."""
    counts = {}
    for op in COLLECTIVES:
        pattern = rf"=\s*[^=\n]*?\s{op}(?:-start)?\("
        counts[op] = len(re.findall(pattern, hlo_text))
    return counts


STEPS = ("phase1", "phase2", "eval")
# The vocabulary is the tokenizer's when model.vocab_size is -1; BERT's uncased WordPiece size stands in then.
STAND_IN_VOCAB_SIZE = 30522


def compile_steps(
    config, devices, hbm_bytes: int, steps=STEPS, vocab_size: int = STAND_IN_VOCAB_SIZE
) -> list[dict]:
    """Compiles pretraining's train step (phase-1 and phase-2 shapes) and eval step for `devices`.

    The program is `bert_jax.program.build`'s, the one `pretrain.run` trains with; the phases are
    `data/phases.py`'s ("phase2" is skipped when the run has none; "eval" is at the eval batches' shape).

    Returns one report per step: per-device bytes, FLOPs, collectives, a fingerprint of the lowered program and
    whether it fits `hbm_bytes`. A step the compiler itself rejects for memory comes back with `fits` False and
    the compiler's line.
    """
    mesh = train_lib.make_mesh(
        config.mesh_shape,
        {"global_batch_size": config.global_batch_size},
        config.grad_accum_steps,
        dcn_mesh_shape=config.get("dcn_mesh_shape"),
        devices=devices,
    )
    # A recipe that names its vocabulary size (ALBERT's 30,000) is compiled at it: its tokenizer has that size.
    recipe_vocab = config.model.get("vocab_size", -1)
    program = program_lib.build(config, mesh, recipe_vocab if recipe_vocab > 0 else vocab_size)
    chips = mesh.devices.size
    names = {"phase1": "train phase 1", "phase2": "train phase 2", "eval": "eval"}
    present = {p.name for p in program.phases} | {"eval"}
    state_bytes = _bytes_per_device(program.abstract)
    reports = []
    for step in [s for s in steps if s in present]:
        name, phase = names[step], program.phase(step)
        logging.info("compiling %s (length %d) for %d chips", name, phase.seq_length, chips)
        model_flops = program.model_flops(phase)
        report = {
            "step": name,
            "seq_length": phase.seq_length,
            "sequences_per_chip": phase.global_batch_size / chips,
            "params_and_optimizer_bytes": state_bytes
            if step != "eval"
            else _bytes_per_device(program.abstract.params),
            "model_flops": (model_flops if step != "eval" else model_flops / 3) / chips,
            "hbm_bytes": hbm_bytes,
            # XLA's cost analysis counts a loop body once: with scan_layers, compiled FLOPs cover one layer.
            "scan_layers": program.model_config.scan_layers,
        }
        if program.packed:
            # Packed rows (segment ids, per-sequence positions and [CLS] slots), at the default row count
            # (`Program.abstract_batch`): every sequence alone, the largest step and so the memory bound.
            batch = program.abstract_batch(phase)
            report["packed_rows"] = batch["segment_ids"].shape[0]
        # Wall time, and CPU time (this process), which does not depend on how busy the machine is.
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            lowered = program.lower(step)
            compiled = lowered.compile()
        except Exception as error:  # noqa: BLE001 (the TPU compiler reports running out of HBM this way)
            text = str(error)
            if "RESOURCE_EXHAUSTED" not in text and "exceeds" not in text.lower():
                raise
            report.update(fits=False, error=_memory_error_line(text))
            report["compile_seconds"] = time.perf_counter() - start
            reports.append(report)
            continue
        report["compile_seconds"] = time.perf_counter() - start
        report["compile_cpu_seconds"] = time.process_time() - start_cpu
        memory, cost, text = (
            compiled.memory_analysis(),
            compiled.cost_analysis(),
            compiled.as_text(),
        )
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        total = (
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes
            + memory.generated_code_size_in_bytes
        )
        report.update(
            argument_bytes=memory.argument_size_in_bytes,
            output_bytes=memory.output_size_in_bytes,
            alias_bytes=memory.alias_size_in_bytes,
            temp_bytes=memory.temp_size_in_bytes,
            total_bytes=total,
            fits=total <= hbm_bytes,
            compiled_flops=float(cost.get("flops", math.nan)),
            collectives=count_collectives(text),
            hlo_fingerprint=hlo_fingerprint(lowered.as_text()),
        )
        reports.append(report)
    return reports


def hlo_fingerprint(hlo_text: str) -> str:
    """A short hash of a lowered program's text (StableHLO, without source locations, which would tell two
    call sites of one builder apart): equal exactly when the programs handed to the compiler are."""
    return hashlib.sha256(hlo_text.encode()).hexdigest()[:16]


def _memory_error_line(text: str) -> str:
    """The compiler's out-of-memory message as one line, with the shortfall when it names both sizes."""
    lines = [line for line in text.splitlines() if re.search(r"exceeds|Ran out of memory", line)]
    line = re.sub(r"\s+", " ", (lines or [text])[0]).strip()[:300]
    sizes = re.search(r"\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", line)
    if sizes:
        line += f" (short by {float(sizes[1]) - float(sizes[2]):.2f}G)"
    return line


def suggestion(config) -> str:
    """What to try when a step does not fit, given what the config already uses."""
    tips = []
    if config.model.remat_policy == "none":
        tips.append("--config.model.remat_policy=dots (or full)")
    if config.dtype == "float32":
        tips.append("--config.dtype=bfloat16")
    if tuple(config.mesh_shape)[1] == 1:
        tips.append("--config.mesh_shape='(1,-1,1)' (fsdp shards params and Adam state)")
    tips.append(f"--config.grad_accum_steps={2 * config.grad_accum_steps}")
    return "try " + ", ".join(tips)


# ----------------------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------------------
def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def format_report(topology: Topology, num_slices: int, config, reports: list[dict]) -> str:
    """The human-readable table of `compile_steps`' reports."""
    chips, per = topology.chips * num_slices, topology.devices_per_chip
    # On tpu7x a chip is two JAX devices, each with its own half of the HBM: the numbers are per device.
    unit = "chip" if per == 1 else "device"
    lines = [
        f"{topology.name} ({topology.topology_name}, {chips} chips"
        + (f" = {chips * per} devices" if per > 1 else "")
        + (f" in {num_slices} slices" if num_slices > 1 else "")
        + f", {_gib(topology.hbm_bytes)} HBM each{'' if per == 1 else ' device'}): mesh {tuple(config.mesh_shape)}"
        + (f" x dcn {tuple(config.dcn_mesh_shape)}" if num_slices > 1 else "")
        + f", batch {config.global_batch_size}, grad_accum_steps {config.grad_accum_steps}, "
        f"dtype {config.dtype}, remat {config.model.remat_policy}"
    ]
    compiler = "the XLA compiler" if topology.generation == "cpu" else "the TPU compiler"
    hint = compile_child.known_crash(topology.generation, config, compile_child.libtpu_version())
    for r in reports:
        if r.get("status") in ("crashed", "failed"):
            segfault = r.get("signal") == signal.SIGSEGV
            lines.append("  " + compile_child.failure_line(r, compiler, hint if segfault else ""))
            continue
        head = (
            f"{r['step']} (length {r['seq_length']}, {r['sequences_per_chip']:g} sequences/{unit}"
        )
        if r.get("packed_rows"):
            head += f"; packed: {r['packed_rows']} rows with segment ids, the most a step can have"
        head += ")"
        if "error" in r:
            lines.append(f"  {head}: DOES NOT FIT: {r['error']}")
            continue
        margin = r["hbm_bytes"] - r["total_bytes"]
        verdict = f"fits, {_gib(margin)} free" if r["fits"] else f"DOES NOT FIT by {_gib(-margin)}"
        collectives = ", ".join(f"{k} {v}" for k, v in r["collectives"].items())
        lines += [
            f"  {head}: compiled in {r['compile_seconds']:.1f} s ({r['compile_cpu_seconds']:.1f} s CPU)",
            f"    per {unit}: params+optimizer {_gib(r['params_and_optimizer_bytes'])}, arguments "
            f"{_gib(r['argument_bytes'])}, temporaries {_gib(r['temp_bytes'])}, total "
            f"{_gib(r['total_bytes'])} of {_gib(r['hbm_bytes'])}: {verdict}",
            f"    FLOPs per {unit}: compiled {r['compiled_flops'] / 1e12:.2f} T, model "
            f"{r['model_flops'] / 1e12:.2f} T (x{r['compiled_flops'] / r['model_flops']:.2f})"
            + (
                " (scan_layers: XLA counts the scanned layers once)" if r.get("scan_layers") else ""
            ),
            f"    collectives: {collectives}",
        ]
    if any(r["fits"] is False for r in reports):
        failed = ", ".join(r["step"] for r in reports if r["fits"] is False)
        lines.append(f"does not fit ({failed}): {suggestion(config)}")
    if any(r["fits"] is None for r in reports):
        failed = ", ".join(r["step"] for r in reports if r["fits"] is None)
        lines.append(f"did not compile ({failed}): docs/tpu.md, 'When the compiler crashes'")
    return "\n".join(lines)


# --config (and its overrides) is the trainer's own flag, from bert_jax.main: the same recipes, resolved the
# same way (configs/bert_large.py, bert_large, or a path).
_CONFIG = main._CONFIG
_TOPOLOGY = flags.DEFINE_string("topology", None, f"Cloud TPU slice: {VALID_FORMS}.")
_NUM_SLICES = flags.DEFINE_integer(
    "num_slices", 1, "Slices joined over DCN (multi-slice); set config.dcn_mesh_shape to match."
)
_STEPS = flags.DEFINE_list("programs", list(STEPS), f"Which of {STEPS} to compile.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
_ISOLATE = flags.DEFINE_bool(
    "isolate", True, "Compile each program in a child process (a compiler crash is then one line)."
)
# Not --log_dir: absl.logging defines that one.
_LOG_DIR = flags.DEFINE_string(
    "child_logs",
    "",
    "Where each child's stderr goes (PROGRAM.log); default: a new temporary directory.",
)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["config"].present or not _TOPOLOGY.value:
        sys.exit("error: --config and --topology are required")
    config = _CONFIG.value
    try:
        run_setup.check_config(config)
        if config.mode != "pretrain":
            raise run_setup.SetupError(
                f"config.mode {config.mode!r}: the compile check is for pretraining"
            )
        with run_setup.setup_error("topology"):
            topology = parse_topology(_TOPOLOGY.value)
        if set(_STEPS.value) - set(STEPS):
            raise run_setup.SetupError(f"--programs {_STEPS.value}: each must be one of {STEPS}")
        if _ISOLATE.value:
            log_dir = _LOG_DIR.value or tempfile.mkdtemp(prefix="bert_jax_compile_")
            os.makedirs(log_dir, exist_ok=True)
            reports = []
            for program in dict.fromkeys(_STEPS.value):
                reports += compile_child.compile_in_child(sys.argv[1:], program, config, log_dir)
        else:
            with run_setup.setup_error("topology"):
                devices = topology_devices(topology, _NUM_SLICES.value)
            compile_child.signal_self_for_tests(_STEPS.value)
            reports = compile_steps(config, devices, topology.hbm_bytes, _STEPS.value)
    except run_setup.SetupError as error:
        sys.exit(f"error: {error}")
    if _JSON.value:
        print(json.dumps({"topology": dataclasses.asdict(topology), "num_slices": _NUM_SLICES.value,
                          "mesh_shape": list(config.mesh_shape), "steps": reports}))  # fmt: skip
    else:
        print(format_report(topology, _NUM_SLICES.value, config, reports))
    return 0 if all(r["fits"] for r in reports) else 1


if __name__ == "__main__":
    app.run(main)

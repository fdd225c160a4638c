"""Compiling one program of the compile check in a child process, and a crashed child's one-line report.

`bert_jax.compile` runs itself once per program (`--programs=ONE --json --noisolate`) through
`compile_in_child`: a TPU compiler that segfaults, or is killed for memory, ends that child only, and comes
back as a report with "status" "crashed" and the signal, which `failure_line` words as one line.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys

from absl import logging

from bert_jax import run_setup

PROGRAM_NAMES = {"phase1": "train phase 1", "phase2": "train phase 2", "eval": "eval"}
# Test seam: "PROGRAM:SIGNAL[,PROGRAM:SIGNAL...]" makes the child that compiles PROGRAM send itself SIGNAL just
# before compiling, as a crashing compiler (11, SIGSEGV) or the kernel's out-of-memory killer (9) ends it;
# tests/compile_test.py checks the parent's report this way without needing a compiler bug.
SIGNAL_ENV = "BERT_JAX_COMPILE_TEST_SIGNAL"


def program_length(config, program: str) -> int:
    """The sequence length `program` (phase1, phase2 or eval) compiles at: eval's is the longest trained."""
    data = config.data
    if program == "phase1" or data.phase2_fraction <= 0:
        return data.seq_length
    return data.phase2_seq_length


def signal_self_for_tests(programs) -> None:
    """The SIGNAL_ENV seam: the child compiling one of `programs` ends itself as the variable says."""
    for entry in filter(None, os.environ.get(SIGNAL_ENV, "").split(",")):
        program, _, number = entry.partition(":")
        if program in programs:
            os.kill(os.getpid(), int(number))


def compile_in_child(args: list[str], program: str, config, log_dir: str) -> list[dict]:
    """Compiles `program` (phase1, phase2 or eval): bert_jax.compile with the command line's `args`, in a child.

    Returns the child's reports (none for phase 2 of a schedule without one), each with "status" "compiled" or
    "out_of_memory" (the compiler rejected it) and the child's "log". A child that dies of a signal gives one
    report with "status" "crashed" and "signal"; one that fails otherwise "status" "failed" and its last
    stderr line as "error"; both with "fits" None. The child's one-line setup error raises SetupError.
    """
    log = os.path.join(log_dir, f"{program}.log")
    command = [sys.executable, "-m", "bert_jax.compile", *args]
    command += [f"--programs={program}", "--json", "--noisolate"]
    logging.info("compiling %s in a child process; its log: %s", program, log)
    with open(log, "w") as stderr:
        child = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, check=False
        )
    with open(log, errors="replace") as f:
        last = ([line.strip() for line in f if line.strip()] or [""])[-1]
    out = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode in (0, 1) and out:
        reports = json.loads(out[-1])["steps"]
        for r in reports:
            r.update(status="out_of_memory" if "error" in r else "compiled", log=log)
        return reports
    if child.returncode > 0 and last.startswith("error: "):
        raise run_setup.SetupError(last.removeprefix("error: "))
    report = dict(
        step=PROGRAM_NAMES[program], seq_length=program_length(config, program), fits=None
    )
    if child.returncode < 0:
        report.update(status="crashed", signal=-child.returncode)
    else:
        report.update(status="failed", exit_status=child.returncode, error=last[:300])
    report["log"] = log
    return [report]


# The first libtpu (and the jax[tpu] that brings it) seen to compile bert_large's phase-2 step for v6e: libtpu
# 0.0.42.1 (jax 0.10.2) segfaults on it when the attention probabilities have dropout inside a rematerialised
# layer (docs/tpu.md, "When the compiler crashes"; the bisection is in docs/measurements/v6e-2026-12-06/).
V6E_ATTENTION_DROPOUT_LIBTPU = ("0.0.50.1", "0.12.0.1")
# Generations where libtpu 0.0.42.1 segfaults on bert_large's phase-2 step (remat dots, attention dropout 0.1)
# and 0.0.50.1 compiles it: v6e (bisected), tpu7x (the same step, seen 2026-12-06; not bisected further).
ATTENTION_DROPOUT_CRASH_GENERATIONS = ("v6e", "tpu7x")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def libtpu_version() -> str | None:
    """The installed libtpu's version, or None without one."""
    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return None


def known_crash(generation: str, config, libtpu: str | None) -> str:
    """What to do about a compiler crash this project has bisected for this generation and config, or ""."""
    fixed, fixed_jax = V6E_ATTENTION_DROPOUT_LIBTPU
    model = config.model
    if (
        generation not in ATTENTION_DROPOUT_CRASH_GENERATIONS
        or model.attention_dropout_prob <= 0
        or model.remat_policy == "none"
    ):
        return ""
    if libtpu is None:
        return ""
    if _version(libtpu) >= _version(fixed):
        return ""
    return (
        f"libtpu {libtpu} crashes on {generation} with attention dropout under remat; libtpu >= {fixed} "
        f"compiles it (pip install 'jax[tpu]>={fixed_jax}', Python >= 3.11), or "
        "--config.model.remat_policy=none"
    )


def failure_line(report: dict, compiler: str = "the TPU compiler", hint: str = "") -> str:
    """A crashed or failed program's report as the table's one line (`hint`: a known cause and its fix)."""
    head = f"{report['step']} (length {report['seq_length']})"
    if report["status"] == "failed":
        return f"{head}: did not compile: {report['error']}; see {report['log']}"
    if hint:
        return failure_line(report, compiler) + f" ({hint})"
    number = report["signal"]
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "unknown signal"
    if number == signal.SIGKILL:  # what the kernel's out-of-memory killer sends
        return f"{head}: {compiler} was killed (signal {number}, {name}: out of memory?); see {report['log']}"
    return f"{head}: {compiler} crashed (signal {number}, {name}); see {report['log']}"

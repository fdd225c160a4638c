"""Exact resume: a run killed with SIGKILL at an arbitrary step and restarted with the same command ends with
parameters and optimizer state bitwise equal to an uninterrupted run and logs the same losses after the
restore point; SIGTERM saves a checkpoint and exits 75, main.EXIT_STOPPED (subprocesses, 8 fake CPU devices, the real loader)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    "JAX_PLATFORMS": "cpu",
}
STEPS = 12


def command(workdir):
    # Phase 2 (length 256) starts at step 9, so the resumed run also crosses the length switch.
    return [
        sys.executable, "-m", "bert_jax.main", f"--workdir={workdir}", "--config.mesh_shape=(4,2,1)",
        f"--config.num_train_steps={STEPS}", "--config.global_batch_size=16", "--config.warmup_steps=2",
        "--config.checkpoint_every_steps=4", "--config.log_every_steps=1", "--config.eval_every_steps=0",
        "--config.data.phase2_seq_length=256", "--config.data.phase2_fraction=0.25",
    ]  # fmt: skip


def start(workdir):
    return subprocess.Popen(command(workdir), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def losses(workdir, once=True):
    """{step: train/loss}. With `once`, a step logged twice (the lines past the restored step not dropped when
    the run resumed) is an error: a dict alone would keep the later line and hide it."""
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    steps = [r["step"] for r in map(json.loads, lines) if "train/loss" in r]
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    assert not (once and repeated), f"steps logged more than once: {repeated}"
    return {r["step"]: r["train/loss"] for r in map(json.loads, lines) if "train/loss" in r}


def wait_for_step(workdir, proc, step, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = Path(workdir) / "metrics.jsonl"
        if path.exists() and max(losses(workdir, once=False), default=0) >= step:
            return
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not reached")


def restore_on_one_device(path):
    """A checkpointed state from any mesh or number of processes, read onto this process's first device."""
    checkpointer = ocp.StandardCheckpointer()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
        checkpointer.metadata(path).item_metadata,
    )
    return checkpointer.restore(path, target)


def final_state(workdir, steps=STEPS):
    """{"params/bert/...": array, "opt_state/...": array, "step": array} of the last checkpoint."""
    restored = restore_on_one_device(Path(workdir) / "checkpoints" / str(steps) / "state")
    return {"/".join(map(str, k)): np.asarray(v) for k, v in _flatten(restored)}


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, (*prefix, key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from _flatten(value, (*prefix, i))
    else:
        yield prefix, tree


def assert_bitwise_equal(a, b):
    assert sorted(a) == sorted(b)
    assert any("opt_state" in k for k in a) and any("params" in k for k in a)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


@pytest.mark.slow
def test_sigkill_and_sigterm_resume_exactly(tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(
        command(reference), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected_losses, expected_state = losses(reference), final_state(reference)
    assert sorted(expected_losses) == list(range(1, STEPS + 1))

    # SIGKILL after step 6 was logged: no chance to save; the restart resumes from step 4 (or later).
    killed = tmp_path / "killed"
    proc = start(killed)
    wait_for_step(killed, proc, 6)
    while not (
        killed / "checkpoints" / "4"
    ).exists():  # the async save finalizes by renaming its folder
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    restart = subprocess.run(
        command(killed), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert restart.returncode == 0, restart.stderr[-3000:]
    resumed_at = int(re.search(r"resumed from \S+ at step (\d+)", restart.stderr).group(1))
    assert resumed_at in (4, 8)
    got = losses(killed)
    assert [got[s] for s in range(resumed_at + 1, STEPS + 1)] == [
        expected_losses[s] for s in range(resumed_at + 1, STEPS + 1)
    ]
    assert_bitwise_equal(final_state(killed), expected_state)

    # SIGTERM (preemption): a checkpoint at the step reached, exit code 75; the restart finishes identically.
    preempted = tmp_path / "preempted"
    proc = start(preempted)
    wait_for_step(preempted, proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    saved = sorted(int(p.name) for p in (preempted / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 2 <= saved[-1] < STEPS and "preempted: saved step" in stderr
    restart = subprocess.run(
        command(preempted), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert f"at step {saved[-1]}" in restart.stderr
    assert_bitwise_equal(final_state(preempted), expected_state)

"""The restart a job scheduler does (issue 24, deliverable 3): the same command, killed with SIGKILL at seeded-random
moments ten times in a row (during start-up, a step, a save, the final files) and restarted at once, ends with
parameters and scores bitwise equal to an uninterrupted run: for fine-tuning (GLUE's tiny recipe on an SST-2-layout
fixture) and for single-process pretraining (bert_tiny shrunk). Each is one subprocess of `python -m bert_jax.main`
per attempt, on one CPU device."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from finetune_test import TINY_MODEL, write_sst2_rule

from bert_jax import checkpoint

REPO = Path(__file__).resolve().parents[1]
# One CPU device: the attempts and the uninterrupted run compile the same program.
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
KILLS = 10


def _command(workdir, flags):
    return [sys.executable, "-m", "bert_jax.main", f"--workdir={workdir}", *flags]


def _finish(workdir, flags):
    """Runs the command to its end; (exit status, seconds, stderr)."""
    start = time.perf_counter()
    done = subprocess.run(
        _command(workdir, flags), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    return done.returncode, time.perf_counter() - start, done.stderr


def _campaign(workdir, flags, whole_s: float, seed: int):
    """KILLS attempts each SIGKILLed after a seeded-random delay in [0, 0.7 whole_s) (an attempt that ends
    first just ends), then the same command to its end. Returns (the attempts' exit statuses, the last
    stderr). Most of an attempt is start-up and compiling; the kills that land later hit steps and saves."""
    rng = np.random.default_rng(seed)
    span_s = 0.7 * whole_s
    statuses = []
    for _ in range(KILLS):
        proc = subprocess.Popen(
            _command(workdir, flags), cwd=REPO, env=ENV,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            proc.wait(timeout=float(rng.uniform(0, span_s)))
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no handler runs, no lock is released, a save may be half-written
            proc.wait()
        statuses.append(proc.returncode)
    rc, _, stderr = _finish(workdir, flags)
    assert rc == 0, stderr[-3000:]
    return statuses, stderr


def _params(workdir):
    return checkpoint.restore_params(str(workdir / "checkpoints"))


def _assert_bitwise_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _metric_steps(workdir):
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]


@pytest.mark.slow
def test_fine_tuning_killed_ten_times_ends_bitwise_equal(tmp_path):
    write_sst2_rule(tmp_path / "glue", tmp_path / "vocab.txt", np.random.default_rng(0))
    model = [f"--config.model.{k}={v}" for k, v in TINY_MODEL.items()]
    flags = [
        "--config=bert_jax/configs/glue.py:tiny", "--config.task=sst2",
        f"--config.data_dir={tmp_path / 'glue'}", f"--config.vocab_file={tmp_path / 'vocab.txt'}",
        "--config.max_seq_length=16", "--config.batch_size=32", "--config.eval_batch_size=32",
        "--config.learning_rate=3e-3", "--config.num_epochs=3", "--config.log_every_steps=5", *model,
    ]  # fmt: skip
    rc, seconds, stderr = _finish(tmp_path / "whole", flags)
    assert rc == 0, stderr[-3000:]

    statuses, _ = _campaign(tmp_path / "cut", flags, whole_s=seconds, seed=0)
    print(f"uninterrupted {seconds:.1f} s; attempts' exit statuses {statuses}")
    assert statuses.count(-9) >= 5, statuses  # most attempts were killed, not finished

    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert cut["results"] == whole["results"] and cut["epochs"] == whole["epochs"]
    (step_a, params_a, _), (step_b, params_b, _) = (
        _params(tmp_path / "cut"),
        _params(tmp_path / "whole"),
    )
    assert step_a == step_b == 30
    _assert_bitwise_equal(params_a, params_b)
    for name in ("leaderboard/SST-2.tsv",):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text()
    # Each log step's lines once, in order, whatever the kills cut short.
    assert _metric_steps(tmp_path / "cut") == _metric_steps(tmp_path / "whole")
    assert not (tmp_path / "cut" / "run.lock").exists()


@pytest.mark.slow
def test_pretraining_killed_ten_times_ends_bitwise_equal(tmp_path):
    flags = [
        "--config.num_train_steps=24", "--config.warmup_steps=2", "--config.global_batch_size=8",
        "--config.log_every_steps=4", "--config.eval_every_steps=0", "--config.checkpoint_every_steps=4",
        "--config.keep_checkpoints=2", "--config.data.seq_length=16",
        "--config.data.max_predictions_per_seq=4", "--config.data.phase2_fraction=0.0",
        "--config.model.hidden_size=32", "--config.model.num_heads=2",
        "--config.model.intermediate_size=64", "--config.model.max_position_embeddings=32",
    ]  # fmt: skip
    rc, seconds, stderr = _finish(tmp_path / "whole", flags)
    assert rc == 0, stderr[-3000:]

    statuses, _ = _campaign(tmp_path / "cut", flags, whole_s=seconds, seed=1)
    print(f"uninterrupted {seconds:.1f} s; attempts' exit statuses {statuses}")
    assert statuses.count(-9) >= 5, statuses

    (step_a, params_a, _), (step_b, params_b, _) = (
        _params(tmp_path / "cut"),
        _params(tmp_path / "whole"),
    )
    assert step_a == step_b == 24
    _assert_bitwise_equal(params_a, params_b)
    assert _metric_steps(tmp_path / "cut") == _metric_steps(tmp_path / "whole")
    assert not (tmp_path / "cut" / "run.lock").exists()

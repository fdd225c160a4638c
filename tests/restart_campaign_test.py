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


def _saving(workdir) -> bool:
    """Whether a save is in flight: Orbax writes a step into a temporary folder and renames it when done."""
    folder = workdir / "checkpoints"
    return folder.is_dir() and any("tmp" in p.name for p in folder.iterdir())


def _campaign(workdir, flags, whole_s: float, seed: int, finished):
    """KILLS attempts of the command, each SIGKILLed at a seeded-random moment and restarted at once, then the
    same command to its end. Even attempts die after a random delay in [0, whole_s / 2) (start-up, compiling,
    steps); odd ones as soon as a save is in flight (or at such a delay). Returns, per attempt, whether it was
    killed before the run had finished (`finished(workdir)`), and the last attempt's stderr."""
    rng = np.random.default_rng(seed)
    killed_unfinished = []
    for attempt in range(KILLS):
        delay = float(rng.uniform(0, whole_s / 2))
        proc = subprocess.Popen(
            _command(workdir, flags), cwd=REPO, env=ENV,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        start = time.perf_counter()
        while proc.poll() is None:
            if time.perf_counter() - start > delay or (attempt % 2 and _saving(workdir)):
                proc.kill()  # SIGKILL: no handler runs, no lock is released, a save may be half-written
                break
            time.sleep(0.005)
        rc = proc.wait()
        killed_unfinished.append(rc == -9 and not finished(workdir))
    rc, _, stderr = _finish(workdir, flags)
    assert rc == 0, stderr[-3000:]
    return killed_unfinished, stderr


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
        "--config.max_seq_length=16", "--config.global_batch_size=32", "--config.eval_batch_size=32",
        "--config.learning_rate=3e-3", "--config.num_epochs=3", "--config.log_every_steps=5", *model,
    ]  # fmt: skip
    rc, seconds, stderr = _finish(tmp_path / "whole", flags)
    assert rc == 0, stderr[-3000:]

    killed, stderr = _campaign(
        tmp_path / "cut", flags, whole_s=seconds, seed=0,
        finished=lambda w: (w / "results.json").exists(),
    )  # fmt: skip
    print(f"uninterrupted {seconds:.1f} s; killed before the end: {killed}")
    assert sum(killed) >= 7, killed  # the kills hit the run, not its "already complete"
    assert "Traceback" not in stderr

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

    killed, stderr = _campaign(
        tmp_path / "cut", flags, whole_s=seconds, seed=1,
        finished=lambda w: (w / "checkpoints" / "24").exists(),
    )  # fmt: skip
    print(f"uninterrupted {seconds:.1f} s; killed before the end: {killed}")
    assert sum(killed) >= 7, killed
    assert "Traceback" not in stderr

    (step_a, params_a, _), (step_b, params_b, _) = (
        _params(tmp_path / "cut"),
        _params(tmp_path / "whole"),
    )
    assert step_a == step_b == 24
    _assert_bitwise_equal(params_a, params_b)
    assert _metric_steps(tmp_path / "cut") == _metric_steps(tmp_path / "whole")
    assert not (tmp_path / "cut" / "run.lock").exists()

"""The entry point: config overrides, locked configs, one-line errors for bad input, resume from a corrupt
checkpoint, and the embedded default run learning (subprocesses, as a user runs it)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from bert_jax.data.corpus import SAMPLE_VOCAB

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "bert_jax" / "configs" / "bert_tiny.py")
ENV = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    "JAX_PLATFORMS": "cpu",
}
FAST = [
    "--config.log_every_steps=1",
    "--config.eval_every_steps=0",
    "--config.async_checkpoints=False",
]


def main(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bert_jax.main", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def parse(*args):
    values = flags.FlagValues()
    argv = [
        "prog",
        *args,
    ]  # config_flags reads argv at definition time to define the override flags
    config_flags.DEFINE_config_file(
        "config", TINY, flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


def test_overrides_parse_and_unknown_keys_are_rejected():
    config = parse(
        f"--config={REPO}/bert_jax/configs/bert_base.py", "--config.num_train_steps=10",
        "--config.global_batch_size=64", "--config.learning_rate=2e-4", "--config.warmup_steps=3",
        "--config.checkpoint_every_steps=5", "--config.seed=7", "--config.mesh_shape=(2,2,2)",
        "--config.dtype=bfloat16", "--config.model.remat_policy=dots",
    )  # fmt: skip
    assert (config.num_train_steps, config.global_batch_size, config.learning_rate) == (
        10,
        64,
        2e-4,
    )
    assert (config.warmup_steps, config.checkpoint_every_steps, config.seed) == (3, 5, 7)
    assert (tuple(config.mesh_shape), config.dtype, config.model.remat_policy) == (
        (2, 2, 2),
        "bfloat16",
        "dots",
    )
    assert config.model.num_layers == 12
    with pytest.raises((flags.Error, AttributeError), match="learning_rat"):
        parse("--config.learning_rat=1.0")


def test_unknown_key_on_the_command_line_fails():
    result = main("--workdir=/nonexistent", "--config.learning_rat=1.0", timeout=60)
    assert result.returncode != 0 and "learning_rat" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.mesh_shape=(3,1,1)"], "error: mesh_shape: mesh_shape (3, 1, 1) needs 3 devices but there are 8"),
        (["--config.global_batch_size=12"], "error: global_batch_size: global_batch_size 12 is not divisible by the 8 batch shards"),
        (["--config.model.max_position_embeddings=128"], "error: model: seq_length 256 > max_position_embeddings 128"),
        (["--config.mode=train"], "error: config.mode 'train' is not one of ('pretrain'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_before_training(tmp_path, args, message):
    result = main(f"--workdir={tmp_path}", *args, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_overrides_run_then_bad_and_corrupt_checkpoints(tmp_path):
    """A short run with every documented override; then a checkpoint from another size is a one-line error,
    and a corrupt latest checkpoint falls back to the previous one with a warning."""
    workdir = tmp_path / "run"
    result = main(
        f"--config={TINY}", f"--workdir={workdir}", "--config.num_train_steps=6",
        "--config.global_batch_size=16", "--config.learning_rate=2e-4", "--config.warmup_steps=2",
        "--config.checkpoint_every_steps=3", "--config.seed=3", "--config.mesh_shape=(2,2,2)",
        "--config.dtype=bfloat16", "--config.data.phase2_seq_length=256", *FAST,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [3, 6]
    stored = json.loads((workdir / "checkpoints" / "6" / "config" / "metadata").read_text())
    assert (stored["seed"], stored["dtype"], stored["mesh_shape"], stored["global_batch_size"]) == (
        3,
        "bfloat16",
        [2, 2, 2],
        16,
    )
    lr = {
        m["step"]: m["train/learning_rate"] for m in metrics(workdir) if "train/learning_rate" in m
    }
    # The rate used by update s (1-based) is schedule(s - 1), the original's formula: warmup 0, 1e-4, then
    # 2e-4 * (1 - step / 6) from step 2 on (its decay runs from step 0 beneath the warmup).
    want = [0.0, 1e-4, 2e-4 * 4 / 6, 2e-4 * 3 / 6, 2e-4 * 2 / 6, 2e-4 / 6]
    assert [lr[s] for s in range(1, 7)] == pytest.approx(want)

    result = main(f"--config={REPO}/bert_jax/configs/bert_mini.py", f"--workdir={workdir}", "--config.mesh_shape=(2,2,2)",
                  "--config.model.vocab_size=-1", *FAST)  # fmt: skip
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: checkpoint: checkpoint ") and "has shape" in last

    for f in (workdir / "checkpoints" / "6" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    result = main(f"--config={TINY}", f"--workdir={workdir}", "--config.num_train_steps=6",
                  "--config.global_batch_size=16", "--config.learning_rate=2e-4", "--config.warmup_steps=2",
                  "--config.checkpoint_every_steps=3", "--config.seed=3", "--config.mesh_shape=(2,2,2)",
                  "--config.dtype=bfloat16", "--config.data.phase2_seq_length=256", *FAST)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "unreadable" in result.stderr
        and "resumed from" in result.stderr
        and "at step 3" in result.stderr
    )
    # The damaged step 6 was re-saved, and the lines past step 3 replaced (each step once).
    assert [m["step"] for m in metrics(workdir) if "train/loss" in m] == [1, 2, 3, 4, 5, 6]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [3, 6]


@pytest.mark.slow
def test_default_run_learns(tmp_path):
    """`python -m bert_jax.main` with no --config/--workdir (the tiny default, found beside the package, in
    ./workdir/bert_tiny), shortened to 120 steps: the MLM loss falls clearly below an untrained model's,
    ln(vocab size). (Measured from ln(V), not from the first logged window: the original optimizer's early
    updates are large, so its first 20-step window is already well below ln(V).)"""
    env = {**ENV, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax.main", "--config.num_train_steps=120",
         "--config.warmup_steps=12", "--config.log_every_steps=20", "--config.eval_every_steps=120"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    workdir = tmp_path / "workdir" / "bert_tiny"
    train = [m for m in metrics(workdir) if "train/mlm_loss" in m]
    assert [m["step"] for m in train] == [20, 40, 60, 80, 100, 120]
    untrained = math.log(len(SAMPLE_VOCAB.read_text().splitlines()))
    assert (
        train[-1]["train/mlm_loss"] < untrained - 2.0
        and train[-1]["train/mlm_loss"] < train[0]["train/mlm_loss"]
    )
    evals = [m for m in metrics(workdir) if "eval/mlm_accuracy" in m]
    assert len(evals) == 1 and evals[0]["eval/mlm_accuracy"] > 0.05
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["120"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--config=nosuch.py"], "error: --config=nosuch.py: no such file, and no packaged recipe of that name"),
        (["--config=configs/bert_base.py:large"], "error: flag --config="),
        (["--config.learning_rat=1"], "error: unknown config field 'learning_rat' Did you mean \"learning_rate\""),
        (["--config.num_train_steps=0"], "error: num_train_steps: 0 must be > 0"),
        (["--config.learning_rate=-1"], "error: learning_rate: -1.0 must be > 0"),
        (["--config.warmup_steps=900"], "error: warmup_steps: 900 must be <= num_train_steps 800"),
        (["--config.data.masked_lm_prob=1.5"], "error: data.masked_lm_prob: 1.5 must be in [0, 1]"),
        (["--workdir=/sys/bert_jax_run"], "error: workdir: "),
        ([f"--config.vocab_file={REPO / 'README.md'}"], f"error: data: {REPO / 'README.md'}: not a WordPiece vocab.txt"),
        (["--config=glue", "--config.task=sst2", "--config.init_checkpoint="], "error: data: no data_dir given and TFDS glue/sst2 (train) is not prepared"),
        (["--config=finetuning"], "error: --config=finetuning: configs/finetuning.py is what the glue, squad, swag and conll recipes share; run one of those"),
        (["--config=configs/pretraining.py"], "error: --config=configs/pretraining.py: configs/pretraining.py is the pretraining recipe the sizes share; run a size: bert_tiny, "),
        (["--config.init_checkpoint=/nonexistent/bert-base-uncased"], "error: init_checkpoint: /nonexistent/bert-base-uncased does not exist; give a bert_jax workdir"),
    ],
)  # fmt: skip
def test_first_hour_errors_are_one_line(tmp_path, args, message):
    """Each bad input of a user's first hour is one line naming the field or path, with no traceback and no
    config dump on the screen."""
    if not any(a.startswith("--workdir") for a in args):
        args = [f"--workdir={tmp_path / 'run'}", *args]
    result = main(*args, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "learning_rate:" not in result.stdout


def test_a_missing_init_checkpoint_leaves_no_workdir_and_a_binary_vocab_is_named(tmp_path):
    result = main(
        f"--workdir={tmp_path / 'run'}",
        f"--config.init_checkpoint={tmp_path / 'gone'}",
        timeout=120,
    )
    assert result.returncode == 1 and not (tmp_path / "run").exists()
    binary = tmp_path / "vocab.bin"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    result = main(f"--workdir={tmp_path / 'run'}", f"--config.vocab_file={binary}", timeout=120)
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: data: {binary}: not a WordPiece vocab.txt (byte 0 is not UTF-8 text); give a vocab.txt (one "
        "token per line), a tokenizer directory or a SentencePiece .model"
    )


def test_workdir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    result = main(f"--workdir={tmp_path / 'file'}", timeout=120)
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: workdir: {tmp_path / 'file'} is a file, not a directory"


def test_default_run_prints_progress_and_finishes_once(tmp_path):
    """A person reads the workdir, compact progress lines with step/total and ETA, each save; a rerun of a
    finished run says so and trains nothing."""
    args = [f"--workdir={tmp_path}", "--config.num_train_steps=4", "--config.warmup_steps=1", "--config.log_every_steps=2",
            "--config.eval_every_steps=0", "--config.checkpoint_every_steps=4"]  # fmt: skip
    first = main(*args, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = first.stdout.splitlines()
    assert lines[0] == f"workdir {tmp_path}"
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split(" · ")[0] for line in progress] == ["step 2/4 (50.0%)", "step 4/4 (100.0%)"]
    assert all(
        " · loss " in line and " seq/s · MFU " in line and " · ETA " in line for line in progress
    )
    assert f"saving step 4 to {tmp_path / 'checkpoints' / '4'}" in lines
    assert (tmp_path / "config.json").exists() and "learning_rate" not in first.stdout
    again = main(*args, timeout=300)
    assert again.returncode == 0
    assert "already complete at step 4 (num_train_steps 4)" in again.stdout
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_lengthening_a_finished_run_says_why_and_what_to_do(tmp_path):
    args = [f"--workdir={tmp_path}", "--config.warmup_steps=1", "--config.global_batch_size=8",
            "--config.eval_every_steps=0", "--config.data.seq_length=32", "--config.data.max_predictions_per_seq=5",
            "--config.data.phase2_seq_length=64", "--config.data.phase2_max_predictions_per_seq=10",
            "--config.data.phase2_fraction=0.5"]  # fmt: skip
    first = main(*args, "--config.num_train_steps=4", timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    longer = main(*args, "--config.num_train_steps=8", timeout=300)
    assert longer.returncode == 1
    assert longer.stderr.strip().splitlines()[-1] == (
        "error: checkpoint: num_train_steps=8 moves the sequence-length phases of the 4 steps already trained "
        "(data phases (start, seq_length, max_predictions) before step 4 were [[0, 32, 5], [2, 64, 10]], this "
        "run has [[0, 32, 5]]); a run cannot be lengthened in place: start a new --workdir with "
        f"--config.init_checkpoint={tmp_path} (the weights, a fresh schedule)"
    )


def test_a_signal_during_start_up_says_what_will_happen(monkeypatch, caplog):
    import logging
    import signal

    from bert_jax import startup

    early = startup.EarlySignals()
    # Before the setup agreement (an earlier run in this process may have passed its own).
    monkeypatch.setattr(startup, "_AGREED", False)
    with caplog.at_level(logging.WARNING):
        early(signal.SIGTERM, None)
        # Past the setup agreement (a resuming run restoring its state) the loop trains one step and saves.
        monkeypatch.setattr(startup, "_AGREED", True)
        early(signal.SIGTERM, None)
    assert [r.getMessage() for r in caplog.records] == [
        "SIGTERM during start-up: stopping before the first step",
        "SIGTERM during start-up: saving after the first step, then stopping",
    ]
    assert early.received == [signal.SIGTERM, signal.SIGTERM]

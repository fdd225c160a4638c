"""Start-up decisions made before JAX starts (bert_jax.platforms, main's distributed join), with the
environment a TPU VM or Colab sets, mocked; and what a CPU run leaves out of its log (subprocesses)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bert_jax import platforms, run_setup

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "environ, metadata, hosts",
    [
        # Colab's TPU runtime: one host, whatever else is set; the metadata server is not asked.
        ({"COLAB_RELEASE_TAG": "release-colab_20260101", "TPU_WORKER_HOSTNAMES": "a,b"}, None, 1),
        # A v5e-1 / v6e-1 VM: the runtime names one worker.
        ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, None, 1),
        # A v4-32 pod slice: four workers, from the environment or from the metadata server.
        ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5"}, None, 4),
        ({}, 4, 4),
        # Neither answers: one host (a pod slice then says --coordinator_address ... explicitly).
        ({}, None, 1),
    ],
)
def test_tpu_hosts(environ, metadata, hosts):
    asked = []

    def ask():
        asked.append(True)
        return metadata

    assert platforms.tpu_hosts(environ, metadata=ask) == hosts
    assert asked == ([True] if "COLAB_RELEASE_TAG" not in environ and not environ else [])


def _main_module(monkeypatch, argv):
    # main reads sys.argv when imported (the recipe's override flags); a fresh import per test.
    monkeypatch.setattr(sys, "argv", ["bert_jax.main", *argv])
    monkeypatch.delitem(sys.modules, "bert_jax.main", raising=False)
    from absl import flags

    for name in ("config", "workdir", "coordinator_address", "num_processes", "process_id",
                 "distributed_timeout_s"):  # fmt: skip
        if name in flags.FLAGS:
            delattr(flags.FLAGS, name)
    import bert_jax.main as main

    flags.FLAGS(["bert_jax.main", *argv])
    return main


@pytest.mark.parametrize(
    "chips, hosts, argv, expected",
    [
        (False, 1, [], None),  # a laptop or GPU machine
        (True, 1, [], None),  # Colab TPU, v5e-1, v6e-1, v4-8: no distributed runtime
        (True, 4, [], ((), 90, 60)),  # a pod slice: JAX's TPU detection
        (
            False,
            1,
            ["--coordinator_address=h:1234", "--num_processes=2", "--process_id=1"],
            (("h:1234", 2, 1), 90, 60),
        ),  # fmt: skip
    ],
)
def test_distributed_start_up_is_decided_explicitly(monkeypatch, chips, hosts, argv, expected):
    main = _main_module(monkeypatch, argv)
    monkeypatch.setattr(platforms, "tpu_chips_attached", lambda: chips)
    monkeypatch.setattr(platforms, "tpu_hosts", lambda: hosts)
    calls = []
    import jax

    monkeypatch.setattr(
        jax.distributed,
        "initialize",
        lambda *args, **kw: calls.append(
            (args, kw["initialization_timeout"], kw["heartbeat_timeout_seconds"])
        ),
    )
    main._initialize_distributed()
    assert calls == ([] if expected is None else [expected])


def test_a_failed_join_is_one_line(monkeypatch):
    main = _main_module(monkeypatch, [])
    monkeypatch.setattr(platforms, "tpu_chips_attached", lambda: True)
    monkeypatch.setattr(platforms, "tpu_hosts", lambda: 2)
    import jax

    def fail(*args, **kw):
        raise RuntimeError("Failed to detect the cluster\nmore")

    monkeypatch.setattr(jax.distributed, "initialize", fail)

    exits = []
    monkeypatch.setattr(main.os, "_exit", exits.append)
    monkeypatch.setattr(main, "_DISTRIBUTED_TIMEOUT", type("Flag", (), {"value": 0.2}))
    with pytest.raises(run_setup.SetupError) as error:
        main._initialize_distributed()
    # The deadline thread stands down once the attempt failed with its line (it used to exit the process,
    # the test runner's worker included, when its timeout came).
    time.sleep(0.5)
    assert exits == []
    assert str(error.value) == (
        "joining the run at the TPU metadata's coordinator (2 hosts): Failed to detect the cluster "
        "(off a TPU pod slice, pass --coordinator_address, --num_processes and --process_id)"
    )


def _platforms_chosen(env):
    code = "import bert_jax, os; print(os.environ.get('JAX_PLATFORMS'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return done.stdout.strip()


def test_no_tpu_probe_without_a_tpu(monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = str(REPO)
    import importlib.util

    has_libtpu = importlib.util.find_spec("libtpu") is not None
    assert _platforms_chosen(env) == (
        "cpu" if has_libtpu and not platforms.tpu_chips_attached() else "None"
    )
    # A platform the user chose stays.
    assert _platforms_chosen({**env, "JAX_PLATFORMS": "cpu,tpu"}) == "cpu,tpu"


@pytest.mark.slow
def test_cpu_runs_print_no_accelerator_or_restore_noise(tmp_path):
    # As a user runs it: no JAX_PLATFORMS, libtpu installed by the [test] extra.
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env["PYTHONPATH"] = str(REPO)
    work = tmp_path / "w"
    train = subprocess.run(
        [sys.executable, "-m", "bert_jax.main", f"--workdir={work}", "--config.num_train_steps=4",
         "--config.warmup_steps=1", "--config.global_batch_size=8", "--config.log_every_steps=2",
         "--config.eval_every_steps=0", "--config.data.phase2_fraction=0"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    convert = subprocess.run(
        [sys.executable, "-m", "bert_jax.convert", f"--from={work}", f"--to={tmp_path / 'hf'}",
         "--format=transformers"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert convert.returncode == 0, convert.stderr[-3000:]
    for stderr in (train.stderr, convert.stderr):
        for noise in ("backend 'tpu'", "TPU", "libtpu", "E0000", "could not be restored"):
            assert noise not in stderr, stderr[-3000:]
    # One progress line per log step on stdout; the full metrics in metrics.jsonl, not repeated in the log.
    progress = [line for line in train.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(" · ")[0] for line in progress] == ["step 2/4 (50.0%)", "step 4/4 (100.0%)"]
    assert "train/mlm_loss=" not in train.stderr
    logged = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [2, 4] and "train/mlm_loss" in logged[0]

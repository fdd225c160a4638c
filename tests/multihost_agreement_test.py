"""Hosts that disagree (issue 24, row 2), 2 local processes x 4 CPU devices (jax.distributed over localhost,
gloo): another learning rate, number of steps or batch size on one process stops both at the setup agreement,
before any step, with the same line naming the first difference; a state that fails on one host only stops both;
no process enters the loop alone, no hang."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from multihost_test import free_port
from pretrain_test import tiny_config

from bert_jax import startup

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}

WORKER = f"""
import json, sys
sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]
process_id, port, workdir, overrides = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{{port}}", 2, process_id, initialization_timeout=60,
                           heartbeat_timeout_seconds=30)
import pretrain_test
from bert_jax import pretrain, run_setup
if process_id == 1 and overrides.pop("break_warm_start", False):
    def broken(*args, **kwargs):
        raise ValueError("/ckpt/model.ckpt: no such file on this host")
    pretrain.warm_start.pretraining_params = broken
fields = {{"num_train_steps": 4, "mesh_shape": (2, 2, 2), "eval_every_steps": 0, "model.vocab_size": -1,
          "data.phase2_fraction": 0.0}}
config = pretrain_test.tiny_config(**{{**fields, **(overrides if process_id == 1 else {{}})}})
try:
    pretrain.run(config, workdir)
except run_setup.SetupError as error:
    sys.exit(f"error: {{error}}")
print("trained", flush=True)
"""


# The fine-tuning loop on the same terms (GLUE's tiny recipe on an SST-2-layout fixture written by the test).
FINETUNE_WORKER = f"""
import json, sys
sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]
process_id, port, workdir, overrides, root = (int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4]),
                                             sys.argv[5])
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{{port}}", 2, process_id, initialization_timeout=60,
                           heartbeat_timeout_seconds=30)
import finetune_test
from bert_jax import finetune, run_setup
if process_id == 1 and overrides.pop("break_warm_start", False):
    def broken(*args, **kwargs):
        raise ValueError("/ckpt/model.ckpt: no such file on this host")
    finetune.warm_start.load = broken
fields = {{"task": "sst2", "data_dir": root + "/glue", "vocab_file": root + "/vocab.txt", "max_seq_length": 16,
          "global_batch_size": 32, "eval_batch_size": 32}}
config = finetune_test.tiny_config(**{{**fields, **(overrides if process_id == 1 else {{}})}})
try:
    finetune.run(config, workdir)
except run_setup.SetupError as error:
    sys.exit(f"error: {{error}}")
print("trained", flush=True)
"""


def run_two(workdir, overrides, timeout=180, *, worker=WORKER, extra=()):
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                worker,
                str(i),
                port,
                str(workdir),
                json.dumps(overrides),
                *extra,
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            outs.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outs


def test_the_first_difference_is_named():
    base = startup.run_fingerprint(tiny_config())
    other = startup.run_fingerprint(tiny_config(learning_rate=2e-3, num_train_steps=20))
    assert base["code version"] == other["code version"] and len(base["code version"]) == 16
    assert startup.first_difference([base, base, other]) == (
        "config learning_rate is 0.001 on process 0 but 0.002 on process 2"
    )
    assert startup.first_difference([base, base]) is None
    # Where compiled code is cached is each host's own business.
    moved = startup.run_fingerprint(tiny_config(compilation_cache_dir="/elsewhere"))
    assert startup.first_difference([base, moved]) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, difference",
    [
        (
            {"learning_rate": 2e-3},
            "config learning_rate is 0.001 on process 0 but 0.002 on process 1",
        ),
        ({"num_train_steps": 6}, "config num_train_steps is 4 on process 0 but 6 on process 1"),
        (
            {"global_batch_size": 32},
            "config global_batch_size is 16 on process 0 but 32 on process 1",
        ),
    ],
)
def test_hosts_that_disagree_all_stop_with_the_same_line(tmp_path, overrides, difference):
    start = time.time()
    outs = run_two(tmp_path, overrides)
    assert time.time() - start < 120
    line = (
        f"error: the processes disagree: {difference} (every process must run the same config, data files "
        "and code); stopping all"
    )
    for code, stdout, stderr in outs:
        assert code == 1 and stderr.strip().splitlines()[-1] == line, stderr[-2000:]
        assert "trained" not in stdout
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


@pytest.mark.slow
def test_a_state_that_fails_on_one_host_stops_both(tmp_path):
    """After the setup agreement, creating the state fails on process 1 only (its init checkpoint is missing):
    both stop with one line, neither enters the loop."""
    start = time.time()
    (code0, out0, err0), (code1, out1, err1) = run_two(tmp_path, {"break_warm_start": True})
    assert time.time() - start < 120
    assert code1 == 1 and err1.strip().splitlines()[-1] == (
        "error: init_checkpoint: /ckpt/model.ckpt: no such file on this host"
    ), err1[-2000:]
    assert code0 == 1 and err0.strip().splitlines()[-1] == (
        "error: process(es) [1] failed restoring or creating the state (see their log); stopping"
    ), err0[-2000:]
    assert "trained" not in out0 + out1


@pytest.mark.slow
def test_fine_tuning_hosts_that_disagree_or_fail_to_load_weights_all_stop(tmp_path):
    """Issue 24 row 2 for the fine-tuning loop: another learning rate on process 1 stops both at the agreement
    with the same line; weights that fail to load on process 1 only stop both at `state_ready`."""
    import numpy as np
    from finetune_test import write_sst2_rule

    write_sst2_rule(tmp_path / "glue", tmp_path / "vocab.txt", np.random.default_rng(0))
    start = time.time()
    outs = run_two(
        tmp_path / "lr", {"learning_rate": 2e-3}, worker=FINETUNE_WORKER, extra=[str(tmp_path)]
    )
    line = (
        "error: the processes disagree: config learning_rate is 0.001 on process 0 but 0.002 on process 1 "
        "(every process must run the same config, data files and code); stopping all"
    )
    for code, stdout, stderr in outs:
        assert code == 1 and stderr.strip().splitlines()[-1] == line, stderr[-2000:]
        assert "trained" not in stdout
    assert not (tmp_path / "lr" / "checkpoints").exists()

    (code0, out0, err0), (code1, out1, err1) = run_two(
        tmp_path / "weights", {"break_warm_start": True}, worker=FINETUNE_WORKER,
        extra=[str(tmp_path)],
    )  # fmt: skip
    assert code1 == 1 and err1.strip().splitlines()[-1] == (
        "error: init_checkpoint: /ckpt/model.ckpt: no such file on this host"
    ), err1[-2000:]
    assert code0 == 1 and err0.strip().splitlines()[-1] == (
        "error: process(es) [1] failed restoring or creating the state (see their log); stopping"
    ), err0[-2000:]
    assert "trained" not in out0 + out1 and time.time() - start < 180

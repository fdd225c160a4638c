"""Multi-host: 2 local processes x 4 CPU devices each (jax.distributed over localhost, gloo collectives) train
to the same parameters as 1 process x 8 devices, within 1e-5 after a few steps. Both use `FakeLoader`, whose
global batch does not depend on the number of processes, and the same (2, 2, 2) mesh, so fsdp and tensor
shards span both hosts."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from resume_test import final_state

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
STEPS = 4

WORKER = f"""
import sys
sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]
process_id, num_processes, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
import jax
jax.config.update("jax_num_cpu_devices", 8 // num_processes)
if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{{port}}", num_processes, process_id)
import pytest
import pretrain_test
from bert_jax import pretrain
pretrain_test.use_fake_data(pytest.MonkeyPatch())
config = pretrain_test.tiny_config(num_train_steps={STEPS}, mesh_shape=(2, 2, 2), checkpoint_every_steps={STEPS},
                                   eval_every_steps=2, preemption_check_every_steps=1)
pretrain.run(config, workdir)
"""


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(num_processes, workdir):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), str(num_processes), port, str(workdir)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(num_processes)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]


def params(workdir):
    state = final_state(workdir, STEPS)
    return {k: v for k, v in state.items() if k.startswith("params/")}


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    launch(1, tmp_path / "one")
    launch(2, tmp_path / "two")
    one, two = params(tmp_path / "one"), params(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) > 20
    for key in one:
        np.testing.assert_allclose(two[key], one[key], atol=1e-5, rtol=0, err_msg=key)
    initial = one["params/nsp/bias"]
    assert np.any(initial != 0)  # trained: the NSP bias starts at zero

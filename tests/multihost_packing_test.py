"""Packed rows on several hosts (issue 20): 2 local processes x 4 CPU devices (jax.distributed over localhost,
gloo) whose own packings of a step need different row counts agree on one count (`pretrain.agreed_rows`: the
largest, the other host's batch padded with empty rows), and the packed 2-process steps give the losses of a
1-process x 8-device run of the same 16 sequences per step unpacked.

Each process reads its host's share with the real loader over the bundled corpus (`process_count=2`); the
1-process run reads both shares and concatenates them unpacked, so both runs see the same sequences."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from multihost_test import free_port

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
STEPS = 2

WORKER = f"""
import json, sys
sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]
process_id, num_processes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
import jax
jax.config.update("jax_num_cpu_devices", 8 // num_processes)
if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{{port}}", num_processes, process_id, initialization_timeout=60)
import numpy as np
import packing_equality_test
from bert_jax import pretrain, sharding, train_lib
from bert_jax import program as program_lib
from bert_jax.data.loader import make_pretraining_loader

packed = num_processes > 1
config = packing_equality_test._config(packed)
config.update(global_batch_size=16, num_train_steps={STEPS})
config.data.phase2_fraction = 0.0  # one shape: one compile per process (the 2 steps still disagree once)
# Two hosts' shares of each step (4 devices each); the 1-process run reads both and concatenates them.
hosts = [process_id] if packed else [0, 1]
loaders = [
    make_pretraining_loader(
        config.data, vocab_file=config.vocab_file,
        do_lower_case=config.do_lower_case, global_batch_size=16, num_train_steps={STEPS}, process_index=h,
        process_count=2, seed=config.seed, row_multiple=4,
    )
    for h in hosts
]
local_rows = []

def batches():
    for step in range({STEPS}):
        if packed:
            batch = loaders[0].batch(step)
        else:
            shares = [loader.unpacked_batch(step) for loader in loaders]
            batch = {{k: np.concatenate([s[k] for s in shares]) for k in shares[0]}}
        local_rows.append(len(batch["input_ids"]))
        yield step, batch

mesh = train_lib.make_mesh(config.mesh_shape, {{"global_batch_size": 16}}, 1)
program = program_lib.build(config, mesh, loaders[0].tokenizer.vocab_size)
state = train_lib.create_state(program.model, program.tx, program.abstract, jax.random.key(config.seed))
rng = train_lib.dropout_key(config)
records = []
items = pretrain.agreed_rows(batches(), num_processes)
for (step, batch), device_batch in sharding.prefetch_to_device(items, mesh, batch=lambda item: item[1]):
    state, metrics = program.train_step(state, device_batch, rng)
    records.append(dict(step=step, rows=int(device_batch["input_ids"].shape[0]),
                        loss=float(metrics["loss"]), grad_norm=float(metrics["grad_norm"])))
print("RESULT " + json.dumps(dict(records=records, local_rows=local_rows)), flush=True)
"""


def launch(num_processes):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(i), str(num_processes), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(num_processes)
    ]
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-3000:]
            line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
            results.append(json.loads(line.removeprefix("RESULT ")))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.slow
def test_hosts_agree_on_packed_rows_and_match_one_unpacked_process():
    host0, host1 = launch(2)
    # Step 0's sequences pack into 8 rows on host 0 but 4 on host 1 (each a multiple of its 4 devices);
    # at step 1 both need 8.
    assert host0["local_rows"] == [8, 8] and host1["local_rows"] == [4, 8]
    # Both hosts feed the largest count: the global batch is 2 x 8 rows at both steps.
    assert (
        [r["rows"] for r in host0["records"]] == [r["rows"] for r in host1["records"]] == [16, 16]
    )
    (one,) = launch(1)
    assert one["local_rows"] == [16] * STEPS and [r["rows"] for r in one["records"]] == [16] * STEPS
    for a, b, ref in zip(host0["records"], host1["records"], one["records"], strict=True):
        assert a == b  # one global computation: both hosts read the same replicated metrics
        assert a["step"] == ref["step"]
        assert a["loss"] == pytest.approx(ref["loss"], rel=1e-5), a
        assert a["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), a

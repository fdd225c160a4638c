"""The TPU compile check (`bert_jax.compile`): topology names, collective counts, bad input, and real compiles
for TPU topologies through libtpu on this CPU machine (slow ones marked)."""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import compile as compile_lib
from bert_jax import compile_child, flops, run_setup, sharding, train_lib
from bert_jax.models import bert as model_lib

REPO = Path(__file__).resolve().parents[1]
GiB = 2**30


@pytest.mark.parametrize(
    "name, topology_name, chips, hbm",
    [
        ("v5e-16", "v5e:4x4", 16, 16),
        ("v5litepod-16", "v5e:4x4", 16, 16),
        ("v5e:4x4", "v5e:4x4", 16, 16),
        ("v5e-8", "v5e:2x4", 8, 16),
        ("v4-32", "v4:2x2x4", 16, 32),  # v4 names count TensorCores: 32 cores = 16 chips
        ("v4-8", "v4:2x2x1", 4, 32),
        ("v4:2x2x4", "v4:2x2x4", 16, 32),
        ("v5p-16", "v5p:2x2x2", 8, 95),
        ("v5p-64", "v5p:2x4x4", 32, 95),
        ("v6e-8", "v6e:2x4", 8, 32),
        ("V6E-256", "v6e:16x16", 256, 32),
        # tpu7x names count TensorCores (2 per chip, each a JAX device with half the chip's 192 GiB).
        ("tpu7x-8", "tpu7x:2x2x1", 4, 96),
        ("tpu7x:2x2x2", "tpu7x:2x2x2", 8, 96),
        ("v7x-128", "tpu7x:4x4x4", 64, 96),
    ],
)
def test_parse_topology(name, topology_name, chips, hbm):
    topology = compile_lib.parse_topology(name)
    assert (topology.topology_name, topology.chips, topology.hbm_bytes) == (
        topology_name,
        chips,
        hbm * GiB,
    )


@pytest.mark.parametrize(
    "name",
    [
        "v7-8",
        "v4-33",
        "v4-12",
        "v5e-12",
        "v5e:4x4x4",
        "v4:4x4",
        "tpu",
        "v5e-",
        "tpu7x-9",
        "tpu7x:2x2",
    ],
)
def test_unknown_topologies_list_the_valid_forms(name):
    with pytest.raises(ValueError) as error:
        compile_lib.parse_topology(name)
    message = str(error.value)
    assert message.startswith(f"unknown topology {name!r}; valid forms: v4-8..v4-4096")
    assert "v5e:4x4" in message and "\n" not in message


def test_tpu7x_chips_are_two_devices_each_and_a_packed_step_compiles_for_them():
    """libtpu's tpu7x:2x2x1 (tpu7x-8): 4 chips, 8 devices of kind TPU7x, two per chip (core_on_chip 0 and 1),
    and the compile check compiles a packed train step of a tiny model for them (segment ids, per-sequence
    positions and [CLS] slots in the batch), reported per device against 96 GiB."""
    topology = compile_lib.parse_topology("tpu7x-8")
    devices = compile_lib.topology_devices(topology)
    assert len(devices) == 8 and {d.device_kind for d in devices} == {"TPU7x"}
    chips = {}
    for d in devices:
        chips.setdefault(tuple(d.coords), []).append(d.core_on_chip)
    assert sorted(chips) == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]
    assert all(sorted(cores) == [0, 1] for cores in chips.values())
    config = _recipe(
        "bert_tiny", dtype="bfloat16", global_batch_size=16, **{
            "data.packing": True, "data.max_sequences_per_row": 4, "data.seq_length": 32,
            "data.max_predictions_per_seq": 5, "data.phase2_seq_length": 64,
            "data.phase2_max_predictions_per_seq": 10,
            # A recipe's own vocabulary size, below the stand-in tokenizer's 30,522 (ALBERT's 30,000 case).
            "model.vocab_size": 1000,
        },
    )  # fmt: skip
    (report,) = compile_lib.compile_steps(config, devices, topology.hbm_bytes, steps=("phase2",))
    assert report["fits"] and report["packed_rows"] == 16 and report["sequences_per_chip"] == 2
    assert report["total_bytes"] < GiB and report["hbm_bytes"] == 96 * GiB
    assert report["collectives"]["all-reduce"] >= 1  # the gradients' mean over the 8 devices
    lines = compile_lib.format_report(topology, 1, config, [report]).splitlines()
    assert lines[0].startswith(
        "tpu7x-8 (tpu7x:2x2x1, 4 chips = 8 devices, 96.00 GiB HBM each device)"
    )
    assert lines[1].startswith(
        "  train phase 2 (length 64, 2 sequences/device; packed: 16 rows with segment ids, the most a step "
        "can have): compiled in "
    )
    assert lines[2].startswith("    per device: params+optimizer ")


def test_count_collectives():
    hlo = """
  %all-reduce.1 = bf16[8,128,256]{2,1,0:T(8,128)(2,1)} all-reduce(%fusion.365), channel_id=3, replica_groups={}
  %all-gather-start = (f32[4]{0}, f32[16]{0}) all-gather-start(%p), channel_id=4, dimensions={0}
  %all-gather-done = f32[16]{0} all-gather-done(%all-gather-start)
  %reduce-scatter.2 = f32[4]{0} reduce-scatter(%x), channel_id=5, dimensions={0}, to_apply=%add
  %fusion.3 = f32[4]{0} fusion(%all-reduce.1), kind=kLoop, calls=%fused_computation
  %all-reduce-start.7 = f32[] all-reduce-start(%y), channel_id=6, to_apply=%add
  %all-reduce-done.7 = f32[] all-reduce-done(%all-reduce-start.7)
"""
    assert compile_lib.count_collectives(hlo) == {
        "all-reduce": 2, "all-gather": 1, "reduce-scatter": 1, "all-to-all": 0, "collective-permute": 0,
    }  # fmt: skip


def test_a_missing_libtpu_is_one_line(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "libtpu" else find_spec(n, *a)
    )
    with pytest.raises(
        run_setup.SetupError, match=r"^libtpu is not installed; .*pip install 'bert_jax\[tpu\]'"
    ):
        compile_lib.topology_devices(compile_lib.parse_topology("v5e-8"))


def _cli(*args):
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax.compile", *args],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr.strip().splitlines()


def test_cli_bad_topology_and_bad_mesh_are_one_line_errors():
    rc, _, err = _cli("--config=configs/bert_tiny.py", "--topology=v5e-15")
    assert rc == 1 and err[-1].startswith(
        "error: topology: unknown topology 'v5e-15'; valid forms: "
    )
    rc, _, err = _cli(
        "--config=configs/bert_tiny.py", "--topology=v5e-8", "--config.mesh_shape=(3,1,1)"
    )
    assert (
        rc == 1
        and err[-1] == "error: mesh_shape: mesh_shape (3, 1, 1) needs 3 devices but there are 8"
    )
    rc, _, err = _cli(
        "--config=configs/bert_tiny.py", "--topology=v5e-8", "--config.global_batch_size=12"
    )
    assert rc == 1 and err[-1] == (
        "error: global_batch_size: global_batch_size 12 is not divisible by the 8 batch shards of the mesh "
        "(data=8 x fsdp=1)"
    )


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


@pytest.mark.slow
def test_tensor_parallel_forward_has_the_megatron_all_reduces():
    """tensor=8 on a v5e-8: per layer exactly one all-reduce of the [batch, length, hidden] activations after
    attention (row-split output projection) and one after the feed-forward (row-split output), plus one
    for the vocabulary-split embedding lookup, and no all-gather: heads and FFN never leave their device."""
    devices = compile_lib.topology_devices(compile_lib.parse_topology("v5e-8"))
    mesh = sharding.make_mesh((1, 1, 8), devices=devices)
    config = model_lib.BertConfig(
        vocab_size=1024, hidden_size=256, num_layers=3, num_heads=8, intermediate_size=1024,
        max_position_embeddings=128, dtype="bfloat16",
    )  # fmt: skip
    model = model_lib.build_model(config, "none")
    boxed = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
    params = _abstract(nn.unbox(boxed), sharding.logical_shardings(boxed, mesh))
    spec = jax.ShapeDtypeStruct((8, 128), jnp.int32, sharding=sharding.batch_sharding(mesh))
    batch = dict.fromkeys(("input_ids", "token_type_ids", "attention_mask"), spec)
    forward = lambda p, b: model.apply({"params": p}, **b)["last_hidden_state"]
    step = jax.jit(
        sharding.under_mesh(forward, mesh), out_shardings=NamedSharding(mesh, PartitionSpec())
    )
    hlo = step.lower(params, batch).compile().as_text()
    reduces = re.findall(r"= (\S+) all-reduce(?:-start)?\(", hlo)
    assert len(reduces) == 1 + 2 * config.num_layers
    assert all(shape.startswith("bf16[8,128,256]") for shape in reduces)
    counts = compile_lib.count_collectives(hlo)
    assert counts == {"all-reduce": 7, "all-gather": 0, "reduce-scatter": 0, "all-to-all": 0,
                      "collective-permute": 0}  # fmt: skip


def _recipe(name, **overrides):
    config = importlib.import_module(f"bert_jax.configs.{name}").get_config()
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def _v5e16():
    topology = compile_lib.parse_topology("v5e-16")
    return compile_lib.topology_devices(topology), topology.hbm_bytes


@pytest.mark.slow
def test_bert_base_both_phases_fit_a_v5e16():
    devices, hbm = _v5e16()
    config = _recipe("bert_base", **{"model.scan_layers": True})
    model_config = train_lib.model_config(
        config.model.to_dict(), vocab_size=30522, dtype="bfloat16", param_dtype="float32"
    )
    reports = compile_lib.compile_steps(config, devices, hbm, steps=("phase1", "phase2"))
    assert [(r["step"], r["seq_length"], r["sequences_per_chip"]) for r in reports] == [
        ("train phase 1", 128, 16), ("train phase 2", 512, 16),
    ]  # fmt: skip
    # Pure data parallelism: every chip holds all float32 parameters and both Adam moments.
    num_params = 110_106_428
    for r in reports:
        assert r["fits"] and r["total_bytes"] < hbm
        assert abs(r["params_and_optimizer_bytes"] - 3 * 4 * num_params) < 1024
        assert r["model_flops"] == 256 / 16 * flops.model_flops_per_sequence(
            model_config, r["seq_length"], {128: 20, 512: 80}[r["seq_length"]]
        )
        assert r["collectives"]["all-reduce"] >= 1  # the gradients' mean over 16 chips


@pytest.mark.slow
def test_bert_large_phase2_fits_a_v5e16_with_fsdp():
    devices, hbm = _v5e16()
    config = _recipe("bert_large", mesh_shape=(1, 16, 1), **{"model.scan_layers": True})
    (report,) = compile_lib.compile_steps(config, devices, hbm, steps=("phase2",))
    assert report["fits"], report
    # fsdp=16 shards every hidden dimension 16 ways: each chip holds ~1/16 of params and Adam state.
    assert report["params_and_optimizer_bytes"] < 3 * 4 * 336_000_000 / 16 * 1.05
    # The sharded weights are gathered for use (the gradients are reduced with all-reduces on TPU).
    assert report["collectives"]["all-gather"] >= 1 and report["collectives"]["all-reduce"] >= 1


def test_two_slices_make_a_data_parallel_mesh_over_dcn():
    topology = compile_lib.parse_topology("v5e-8")
    devices = compile_lib.topology_devices(topology, num_slices=2)
    assert len(devices) == 16 and {d.slice_index for d in devices} == {0, 1}
    mesh = sharding.make_mesh((-1, 2, 1), devices=devices, dcn_mesh_shape=(2, 1, 1))
    assert dict(mesh.shape) == {"data": 8, "fsdp": 2, "tensor": 1}
    # Slices are outermost on the data axis: the first 4 data rows are slice 0, the last 4 slice 1, so only
    # the data-parallel gradient mean crosses the data-center network.
    slices = [[d.slice_index for d in row] for row in mesh.devices[:, :, 0]]
    assert slices == [[0, 0]] * 4 + [[1, 1]] * 4
    with pytest.raises(
        ValueError, match=r"dcn_mesh_shape \(3, 1, 1\) needs 3 devices but there are 2"
    ):
        sharding.make_mesh((-1, 1, 1), devices=devices, dcn_mesh_shape=(3, 1, 1))


def test_report_says_by_how_much_a_step_does_not_fit_and_what_to_try():
    config = _recipe("bert_large", dtype="float32", **{"model.remat_policy": "none"})
    topology = compile_lib.parse_topology("v5e-16")
    common = dict(
        seq_length=512, sequences_per_chip=16, hbm_bytes=16 * GiB, params_and_optimizer_bytes=GiB
    )
    fits = dict(common, step="train phase 1", argument_bytes=GiB, output_bytes=GiB, alias_bytes=GiB,
                temp_bytes=3 * GiB, total_bytes=4 * GiB, fits=True, compiled_flops=2e12, model_flops=1.6e12,
                compile_seconds=10.0, compile_cpu_seconds=9.0,
                collectives=dict.fromkeys(compile_lib.COLLECTIVES, 0))  # fmt: skip
    over = dict(
        fits, step="train phase 2", temp_bytes=17.5 * GiB, total_bytes=18.5 * GiB, fits=False
    )
    oom = dict(
        common, step="eval", fits=False, error="RESOURCE_EXHAUSTED: Ran out of memory in hbm"
    )
    text = compile_lib.format_report(topology, 1, config, [fits, over, oom])
    lines = text.splitlines()
    assert lines[0].startswith(
        "v5e-16 (v5e:4x4, 16 chips, 16.00 GiB HBM each): mesh (-1, 1, 1), batch 256"
    )
    assert "total 4.00 GiB of 16.00 GiB: fits, 12.00 GiB free" in text
    assert "temporaries 17.50 GiB, total 18.50 GiB of 16.00 GiB: DOES NOT FIT by 2.50 GiB" in text
    assert "FLOPs per chip: compiled 2.00 T, model 1.60 T (x1.25)" in text
    assert (
        "eval (length 512, 16 sequences/chip): DOES NOT FIT: RESOURCE_EXHAUSTED: Ran out of memory in hbm"
        in text
    )
    assert lines[-1] == (
        "does not fit (train phase 2, eval): try --config.model.remat_policy=dots (or full), "
        "--config.dtype=bfloat16, --config.mesh_shape='(1,-1,1)' (fsdp shards params and Adam state), "
        "--config.grad_accum_steps=2"
    )


def test_the_compilers_out_of_memory_error_becomes_one_line_with_the_shortfall():
    # As libtpu words it for bert_large, float32, no remat, phase 2 on a v5e-16 (docs/tpu.md).
    text = (
        "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
        "for HLO temporaries (34.07G) exceeds available HBM (15.75G).\n\nsome details"
    )
    assert compile_lib._memory_error_line(text) == (
        "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
        "for HLO temporaries (34.07G) exceeds available HBM (15.75G). (short by 18.32G)"
    )


@pytest.mark.slow
def test_the_train_step_compiles_for_two_slices():
    devices = compile_lib.topology_devices(compile_lib.parse_topology("v5e-8"), num_slices=2)
    config = _recipe(
        "bert_tiny",
        dtype="bfloat16",
        global_batch_size=64,
        mesh_shape=(1, 8, 1),
        dcn_mesh_shape=(2, 1, 1),
    )
    (report,) = compile_lib.compile_steps(config, devices, 16 * GiB, steps=("phase1",))
    assert report["fits"] and report["sequences_per_chip"] == 4
    # The gradient mean across the two slices (and the fsdp weight gathers inside each).
    assert report["collectives"]["all-reduce"] >= 1 and report["collectives"]["all-gather"] >= 1


# bert_tiny at short lengths on this machine's CPU: each child's compile takes seconds.
_TINY = [
    "--config=configs/bert_tiny.py", "--topology=cpu", "--config.global_batch_size=8",
    "--config.data.seq_length=16", "--config.data.max_predictions_per_seq=2",
    "--config.data.phase2_seq_length=32", "--config.data.phase2_max_predictions_per_seq=4",
]  # fmt: skip


def test_a_crashed_or_killed_compiler_is_one_report_and_the_other_programs_are_still_compiled(
    tmp_path,
):
    # The seam makes phase 2's child segfault and eval's die of SIGKILL (as the out-of-memory killer does).
    env = dict(os.environ, **{compile_child.SIGNAL_ENV: "phase2:11,eval:9"})
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax.compile", *_TINY, "--json", f"--child_logs={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    phase1, phase2, evaluate = json.loads(result.stdout)["steps"]
    assert (phase1["step"], phase1["seq_length"], phase1["status"], phase1["fits"]) == (
        "train phase 1", 16, "compiled", True,
    )  # fmt: skip
    assert phase1["total_bytes"] > 0 and phase1["log"] == str(tmp_path / "phase1.log")
    assert phase2 == {
        "step": "train phase 2", "seq_length": 32, "fits": None, "status": "crashed", "signal": 11,
        "log": str(tmp_path / "phase2.log"),
    }  # fmt: skip
    assert evaluate == {
        "step": "eval", "seq_length": 32, "fits": None, "status": "crashed", "signal": 9,
        "log": str(tmp_path / "eval.log"),
    }  # fmt: skip
    # Each child's stderr is in its log: phase 1's names the step it compiled.
    assert "compiling train phase 1 (length 16)" in (tmp_path / "phase1.log").read_text()


def test_the_table_gives_a_crash_one_line_with_its_signal_and_log(monkeypatch):
    config = _recipe("bert_large")
    monkeypatch.setattr(
        compile_child, "libtpu_version", lambda: "0.0.50.1"
    )  # no known crash to name
    topology = compile_lib.parse_topology("v6e-8")
    crashed = dict(step="train phase 2", seq_length=512, fits=None, status="crashed", signal=11,
                   log="/tmp/logs/phase2.log")  # fmt: skip
    killed = dict(crashed, step="eval", signal=9, log="/tmp/logs/eval.log")
    failed = dict(crashed, step="train phase 1", seq_length=128, status="failed", exit_status=1,
                  error="jax.errors.JaxRuntimeError: INTERNAL: boom", log="/tmp/logs/phase1.log")  # fmt: skip
    lines = compile_lib.format_report(topology, 1, config, [failed, crashed, killed]).splitlines()
    assert lines[1:] == [
        "  train phase 1 (length 128): did not compile: jax.errors.JaxRuntimeError: INTERNAL: boom; "
        "see /tmp/logs/phase1.log",
        "  train phase 2 (length 512): the TPU compiler crashed (signal 11, SIGSEGV); see /tmp/logs/phase2.log",
        "  eval (length 512): the TPU compiler was killed (signal 9, SIGKILL: out of memory?); "
        "see /tmp/logs/eval.log",
        "did not compile (train phase 1, train phase 2, eval): docs/tpu.md, 'When the compiler crashes'",
    ]


def test_a_segfault_on_v6e_with_attention_dropout_names_the_libtpu_that_compiles_it(monkeypatch):
    config = _recipe("bert_large")
    assert compile_child.known_crash("v6e", config, "0.0.42.1") == (
        "libtpu 0.0.42.1 crashes on v6e with attention dropout under remat; libtpu >= 0.0.50.1 compiles it "
        "(pip install 'jax[tpu]>=0.12.0.1', Python >= 3.11), or --config.model.remat_policy=none"
    )
    # Fixed libtpu, another generation, no attention dropout, no libtpu: nothing known.
    assert compile_child.known_crash("v6e", config, "0.0.52") == ""
    assert compile_child.known_crash("v5e", config, "0.0.42.1") == ""
    no_dropout = _recipe("bert_large", **{"model.attention_dropout_prob": 0.0})
    assert compile_child.known_crash("v6e", no_dropout, "0.0.42.1") == ""
    no_remat = _recipe("bert_large", **{"model.remat_policy": "none"})
    assert compile_child.known_crash("v6e", no_remat, "0.0.42.1") == ""
    assert compile_child.known_crash("v6e", config, None) == ""
    # tpu7x: the same bert_large phase-2 step crashes libtpu 0.0.42.1 and compiles on 0.0.50.1 (docs/tpu.md).
    assert compile_child.known_crash("tpu7x", config, "0.0.42.1").startswith(
        "libtpu 0.0.42.1 crashes on tpu7x with attention dropout under remat; libtpu >= 0.0.50.1 compiles it "
    )
    assert compile_child.known_crash("tpu7x", config, "0.0.50.1") == ""
    monkeypatch.setattr(compile_child, "libtpu_version", lambda: "0.0.42.1")
    crashed = dict(step="train phase 2", seq_length=512, fits=None, status="crashed", signal=11,
                   log="/tmp/logs/phase2.log")  # fmt: skip
    killed = dict(crashed, step="eval", signal=9, log="/tmp/logs/eval.log")
    lines = compile_lib.format_report(
        compile_lib.parse_topology("v6e-8"), 1, config, [crashed, killed]
    ).splitlines()
    assert lines[1] == (
        "  train phase 2 (length 512): the TPU compiler crashed (signal 11, SIGSEGV); see /tmp/logs/phase2.log "
        "(libtpu 0.0.42.1 crashes on v6e with attention dropout under remat; libtpu >= 0.0.50.1 compiles it "
        "(pip install 'jax[tpu]>=0.12.0.1', Python >= 3.11), or --config.model.remat_policy=none)"
    )
    # An out-of-memory kill is not that crash.
    assert lines[2].endswith("(signal 9, SIGKILL: out of memory?); see /tmp/logs/eval.log")

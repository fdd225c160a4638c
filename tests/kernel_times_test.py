"""The kernel table read from a profiler trace: stream kernels only, per step, largest first."""

import gzip
import json

from bert_jax import benchmark, kernel_times


def _trace(path, events):
    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
        # What libtpu adds to any trace once it is loaded: not an accelerator.
        {
            "ph": "M",
            "pid": 3,
            "name": "process_name",
            "args": {"name": "/device:CUSTOM:Megascale Trace"},
        },
        {
            "ph": "M",
            "pid": 1,
            "tid": 7,
            "name": "thread_name",
            "args": {"name": "Stream #7(Compute)"},
        },
        {"ph": "M", "pid": 1, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
    ]
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": meta + events}, f)


def test_stream_kernels_per_step_without_the_ops_line(tmp_path):
    kernel = lambda name, dur, tid=7, pid=1: {
        "ph": "X",
        "pid": pid,
        "tid": tid,
        "name": name,
        "dur": dur,
    }
    events = [kernel("gemm", 3000.0), kernel("gemm", 3000.0), kernel("softmax", 1000.0)]
    # The ops line repeats the kernels' spans, and host events are not device time: both left out.
    events += [kernel("fusion.1", 7000.0, tid=8), kernel("ExecuteHelper", 9000.0, tid=1, pid=2)]
    events += [kernel("megascale", 5000.0, tid=1, pid=3)]
    _trace(tmp_path / "host.trace.json.gz", events)
    text = kernel_times.table(tmp_path, steps=2).splitlines()
    assert text[0] == "host.trace.json.gz: kernels on the device streams"
    assert text[1].startswith("time per step 3.50 ms over 2 events (2 distinct), 2 step(s)")
    assert text[3].split() == ["3.000", "85.7%", "1", "gemm"]
    assert text[4].split() == ["0.500", "14.3%", "0.5", "softmax"]


def test_benchmark_profile_on_a_cpu_gives_a_table(tmp_path):
    benchmark.run(
        "tiny",
        2,
        8,
        2,
        dtype="float32",
        references=(),
        steps=1,
        which="train",
        profile_dir=str(tmp_path),
    )
    lines = kernel_times.table(tmp_path, steps=benchmark.PROFILE_STEPS).splitlines()
    assert lines[0].endswith("host XLA events (no accelerator in this trace)")
    assert float(lines[1].split()[3]) > 0  # "time per step X ms"
    assert len(lines) > 5


def test_kernels_named_by_the_operations_they_came_from(tmp_path):
    kernel = lambda name, dur: {"ph": "X", "pid": 1, "tid": 7, "name": name, "dur": dur}
    _trace(
        tmp_path / "host.trace.json.gz",
        [kernel("input_reduce_fusion_9", 2000.0), kernel("nvjet_x", 1000.0)],
    )
    hlo = tmp_path / "module.after_optimizations.txt"
    hlo.write_text(
        "HloModule jit_train_step\n"
        "  %input_reduce_fusion.9 = bf16[8]{0} fusion(%p), kind=kInput, calls=%f, metadata={op_name="
        '"jit(train_step)/transpose(jvp(BertForPreTraining))/bert/layer_3/intermediate/reduce_sum" x=1}\n'
        '  %loop_fusion.2 = f32[] fusion(%q), metadata={op_name="jit(train_step)/jvp(BertForPreTraining)/bert/mul"}\n'
    )
    assert kernel_times.hlo_op_names(hlo) == {
        "input_reduce_fusion_9": "bwd bert/layer_3/intermediate/reduce_sum",
        "loop_fusion_2": "fwd bert/mul",
    }
    rows = kernel_times.table(tmp_path, hlo=hlo).splitlines()[3:]
    assert rows[0].endswith("input_reduce_fusion_9  <- bwd bert/layer_3/intermediate/reduce_sum")
    assert rows[1].endswith("nvjet_x")  # a library kernel: no fusion, no annotation

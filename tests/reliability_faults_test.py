"""Issue 24's reliability rows that need no second process: a lock from a restarted host or container, data
that changed under a resumed run, harmless changes allowed on resume, a corrupt record met mid-run, a disk filled
by another writer, metrics.jsonl after a restart from zero or a torn line, a checkpoint without its checksums,
quiet recovered faults, a signal while the state is restored. Hosts that disagree: multihost_agreement_test.py."""

import json
import logging
import os
import shutil
import signal
import socket
import time

import jax
import numpy as np
import pytest
from checkpoint_test import _abstract, _state
from pretrain_test import tiny_config

from bert_jax import checkpoint, pretrain, reporting, run_setup, sharding, startup, train_lib
from bert_jax.configs.pretraining import data_config
from bert_jax.data import corpus as corpus_lib
from bert_jax.data import loader as loader_lib
from bert_jax.data import records
from bert_jax.data.create_pretraining_data import create_shards
from bert_jax.data.tfrecord import CorruptRecordError
from bert_jax.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh((8, 1, 1))


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------------------------------------
# Row 3: a lock from a restarted host or container does not block the new run; row 12: a cut-short lock.
# ----------------------------------------------------------------------------------------------------------
def test_a_lock_whose_pid_was_reused_or_whose_host_rebooted_is_taken_over(tmp_path, caplog):
    here, now = socket.gethostname(), time.time()
    live = os.getppid()  # a live process on this host that is not the lock's owner
    started = startup._process_start(live)
    boot = startup._boot_id()
    cases = [
        # Container restart: the pid exists again but belongs to a process started at another time.
        (
            {"pid": live, "started": "1", "boot_id": boot, "heartbeat": now},
            f"pid {live} now belongs to",
        ),
        # Reboot: another boot id.
        (
            {"pid": live, "started": started, "boot_id": "another-boot", "heartbeat": now},
            "rebooted",
        ),
        # An old lock without the new fields, its heartbeat an hour old: stale whatever the pid.
        ({"pid": live, "heartbeat": now - 3615}, "no heartbeat for 3615 s"),
    ]
    for owner, reason in cases:
        (tmp_path / "run.lock").write_text(json.dumps({"host": here, **owner}))
        caplog.clear()
        with caplog.at_level(logging.WARNING), startup.WorkdirLock(tmp_path, process_index=0):
            assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
        assert (
            [w for w in _warnings(caplog) if "stale lock" in w]
            == [w for w in _warnings(caplog) if reason in w]
            != []
        )
    # The same live process, recorded as it is: still refused.
    (tmp_path / "run.lock").write_text(
        json.dumps(
            {"host": here, "pid": live, "started": started, "boot_id": boot, "heartbeat": now}
        )
    )
    with pytest.raises(run_setup.SetupError, match=f"in use by pid {live} on {here}"):
        startup.WorkdirLock(tmp_path, process_index=0).__enter__()
    # A lock cut short while written: one line saying so, not "no heartbeat for 1796571369 s".
    (tmp_path / "run.lock").write_text('{"host": "ab')
    caplog.clear()
    with caplog.at_level(logging.WARNING), startup.WorkdirLock(tmp_path, process_index=0):
        pass
    assert _warnings(caplog) == [
        f"taking over the stale lock {tmp_path / 'run.lock'} (it was cut short while being written)"
    ]


# ----------------------------------------------------------------------------------------------------------
# Row 4: the data trained on is stored with each checkpoint and compared on resume.
# ----------------------------------------------------------------------------------------------------------
def _text_loader(pattern, vocab):
    config = data_config()
    config.update(seq_length=32, max_predictions_per_seq=5, phase2_fraction=0.0)
    config.update(input_pattern=pattern, eval_input_pattern="")
    return loader_lib.make_pretraining_loader(
        config,
        vocab_file=str(vocab),
        global_batch_size=8,
        num_train_steps=40,
        seed=1,
        process_index=0,
        process_count=1,
    )


def test_a_new_shard_or_another_vocab_at_the_same_path_is_refused_on_resume(tmp_path):
    text = corpus_lib.SAMPLE_CORPUS.read_text().split("\n\n")
    half = len(text) // 2
    (tmp_path / "a.txt").write_text("\n\n".join(text[:half]))
    (tmp_path / "b.txt").write_text("\n\n".join(text[half:]))
    vocab = tmp_path / "vocab.txt"
    shutil.copy(corpus_lib.SAMPLE_VOCAB, vocab)
    pattern = f"{tmp_path}/shard-*.txt"
    (tmp_path / "shard-0.txt").write_text((tmp_path / "a.txt").read_text())
    saved = json.loads(json.dumps(_text_loader(pattern, vocab).get_state(12)))
    assert saved["files"] == {
        f"file {tmp_path}/shard-0.txt": (tmp_path / "a.txt").stat().st_size,
        f"vocab {vocab}": saved["files"][f"vocab {vocab}"],
    }
    _text_loader(pattern, vocab).set_state(saved)  # the same data: resumes

    (tmp_path / "shard-1.txt").write_text((tmp_path / "b.txt").read_text())
    with pytest.raises(ValueError) as error:
        _text_loader(pattern, vocab).set_state(saved)
    size = (tmp_path / "b.txt").stat().st_size
    assert str(error.value).startswith(
        f"the data differs from the checkpoint's: added {tmp_path}/shard-1.txt ({size} bytes) (each epoch's "
        "order spans every file"
    )
    (tmp_path / "shard-1.txt").unlink()
    # Another vocab at the same path, the same size: one token renamed.
    words = vocab.read_text().splitlines()
    index = next(i for i, w in enumerate(words) if w == "the")
    words[index] = "thx"
    vocab.write_text("\n".join(words) + "\n")
    with pytest.raises(ValueError, match=rf"vocab {vocab} changed \(content hash "):
        _text_loader(pattern, vocab).set_state(saved)


# ----------------------------------------------------------------------------------------------------------
# Row 5: harmless changes are allowed on resume.
# ----------------------------------------------------------------------------------------------------------
def test_moving_the_compilation_cache_or_skipping_corrupt_records_is_allowed_on_resume(caplog):
    stored = json.loads(json.dumps(tiny_config().to_dict()))
    changed = tiny_config(compilation_cache_dir="/elsewhere", **{"data.skip_corrupt_records": True})
    with caplog.at_level(logging.WARNING):
        pretrain.check_resume(stored, changed, step=5)
    assert _warnings(caplog) == [
        "resuming with changed settings: compilation_cache_dir: '~/.cache/bert_jax/xla' -> '/elsewhere'; "
        "data.skip_corrupt_records: False -> True"
    ]


# ----------------------------------------------------------------------------------------------------------
# Row 6: a corrupt record met mid-run.
# ----------------------------------------------------------------------------------------------------------
def test_a_corrupt_record_mid_run_is_one_line_after_saving_the_last_step(tmp_path, monkeypatch):
    path = tmp_path / "instances.tfrecord"
    tok = load_tokenizer(str(corpus_lib.SAMPLE_VOCAB))
    create_shards(
        str(corpus_lib.SAMPLE_EVAL_CORPUS), tok,
        lambda block, current: current or records.InstanceWriter([str(path)]),
        max_seq_length=16, max_predictions=4, masked_lm_prob=0.15, short_seq_prob=0.1, dupe_factor=1,
        seed=3, whole_word=False, documents_per_shard=1000,
    )  # fmt: skip
    source = records.InstanceSource(str(path))
    middle = len(source) // 2
    offset = int(source._files[0].offsets[middle]) - 12
    data = bytearray(path.read_bytes())
    data[offset + 20] ^= 0x08  # one bit in the middle record's data
    path.write_bytes(bytes(data))
    steps = len(source) // 16 + 2  # more than an epoch: every record is read
    config = tiny_config(
        num_train_steps=steps, eval_every_steps=0, checkpoint_every_steps=1000, mesh_shape=(8, 1, 1),
        **{"model.vocab_size": -1, "data.source": "instances", "data.input_pattern": str(path),
           "data.eval_input_pattern": str(path), "data.phase2_fraction": 0.0},
    )  # fmt: skip
    workdir = tmp_path / "w"
    with pytest.raises(CorruptRecordError) as error:
        pretrain.run(config, str(workdir))
    message = str(error.value)
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 0 < saved[0] < steps
    assert message == (
        f"{path}: record {middle} at byte {offset} fails its data CRC; step {saved[0]} is saved; rerun with "
        "--config.data.skip_corrupt_records=True to skip damaged records (allowed when resuming)"
    )
    # The advice works: the rerun resumes at the saved step and finishes.
    config.data.skip_corrupt_records = True
    state = pretrain.run(config, str(workdir))
    assert int(state.step) == steps


# ----------------------------------------------------------------------------------------------------------
# Row 7: a disk filled by another writer.
# ----------------------------------------------------------------------------------------------------------
def test_the_space_check_counts_the_files_on_disk(small_disk, mesh):
    """A 3 MiB tmpfs (root only) and a 2.5 MiB state: it fits in memory terms, not on disk (~4.1 MiB)."""
    target = small_disk
    ckpt = checkpoint.Checkpointer(str(target), keep=1, save_interval_steps=1)
    state = {"w": jax.device_put(np.ones((640, 1024), np.float32))}
    with pytest.raises(checkpoint.CheckpointSaveError) as error:
        ckpt.save(5, state, data_state={}, config={})
    assert str(error.value).endswith(
        "MiB free, the state needs up to 2.5 MiB (disk full?); on disk a save takes about 4.1 MiB"
    )
    ckpt.close()


def test_a_failing_flush_in_the_cleanup_is_one_warning(tmp_path, caplog, monkeypatch):
    writer = reporting.MetricWriter(tmp_path, process_index=0)
    writer.write_scalars(1, {"train/loss": 1.0})

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer._tensorboard, "close", full)
    with caplog.at_level(logging.WARNING):
        writer.close()  # raised OSError before: it replaced the run's own one-line error
    assert _warnings(caplog) == [
        f"could not flush TensorBoard events in {tmp_path}: OSError: [Errno 28] No space left on device"
    ]


# ----------------------------------------------------------------------------------------------------------
# Rows 8 and 9: metrics.jsonl after a restart from zero, and with a torn last line.
# ----------------------------------------------------------------------------------------------------------
def test_metrics_of_a_run_restarted_from_zero_and_a_torn_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "train/loss": 1.0}) + "\n" for s in (1, 2, 3)))
    # Killed before its first save: the rerun starts at step 0 and logs steps 1-3 again.
    with reporting.MetricWriter(tmp_path, process_index=0, resume_step=0) as writer:
        writer.write_scalars(1, {"train/loss": 2.0})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "train/loss": 2.0}
    ]
    with path.open("a") as f:
        f.write('{"step": 2, "train/lo')  # a crash mid-write
    with caplog.at_level(logging.WARNING):
        with reporting.MetricWriter(tmp_path, process_index=0, resume_step=1) as writer:
            writer.write_scalars(2, {"train/loss": 3.0})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "train/loss": 2.0},
        {"step": 2, "train/loss": 3.0},
    ]
    assert _warnings(caplog) == [f"{path}: dropped 1 torn line(s) (a write cut short by a crash)"]


# ----------------------------------------------------------------------------------------------------------
# Rows 10 and 12: a checkpoint without its checksums falls back; recovered faults are one line naming the file.
# ----------------------------------------------------------------------------------------------------------
def _two_steps(directory, mesh):
    ckpt = checkpoint.Checkpointer(str(directory), keep=3, save_interval_steps=1, async_save=False)
    for step in (1, 2):
        ckpt.save(step, _state(mesh, step, step), data_state={"step": step}, config={})
    return ckpt


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_a_checkpoint_without_its_checksums_falls_back_with_one_line(
    tmp_path, mesh, caplog, damage
):
    ckpt = _two_steps(tmp_path, mesh)
    manifest = tmp_path / "2" / "manifest" / "metadata"
    if damage == "missing":
        manifest.unlink()
    else:
        manifest.write_text("")
    with caplog.at_level(logging.WARNING):
        state, data, _ = ckpt.restore(None, _abstract(mesh))
    assert data == {"step": 1} and int(state.step) == 1
    problem = (
        "is missing (no checksums to verify against)"
        if damage == "missing"
        else ("is unreadable (JSONDecodeError)")
    )
    assert _warnings(caplog) == [
        f"checkpoint {tmp_path / '2'} is unreadable ({manifest} {problem}); trying the previous one",
        f"deleting damaged checkpoint {tmp_path / '2'}; step 1 restored",
    ]
    ckpt.close()
    # The params-only reader (fine-tuning from a pretraining workdir) takes the same path.
    (tmp_path / "1" / "manifest" / "metadata").unlink()
    with pytest.raises(
        ValueError, match=r"no usable checkpoint in .*: step 1: .*metadata is missing"
    ):
        checkpoint.restore_params(str(tmp_path))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_truncated_checkpoint_is_one_line_naming_the_file(tmp_path, mesh, caplog):
    ckpt = _two_steps(tmp_path, mesh)
    truncated = [
        p for p in (tmp_path / "2" / "state").rglob("*") if p.is_file() and p.parent.name == "d"
    ]
    for p in truncated:
        p.write_bytes(p.read_bytes()[:7])
    with caplog.at_level(logging.WARNING):
        ckpt.restore(None, _abstract(mesh))
    warnings = _warnings(caplog)
    assert len(warnings) == 2 and all("\n" not in w for w in warnings), warnings
    named = warnings[0].split(" reading ")[1].split(")")[0]
    assert named in {str(p) for p in truncated}, named  # the file, not the state/ folder
    ckpt.close()


# ----------------------------------------------------------------------------------------------------------
# Row 13: a signal while the state is restored stops before compiling or running a step.
# ----------------------------------------------------------------------------------------------------------
def test_a_signal_while_restoring_stops_before_the_first_step():
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        startup.EarlySignals().install()
        os.kill(os.getpid(), signal.SIGTERM)  # after the setup agreement, during the restore
        preemption = train_lib.Preemption(check_every=10)
        with pytest.raises(run_setup.Preempted, match="before the first step"):
            preemption.stop_before_first_step()
        preemption.restore()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    quiet = train_lib.Preemption(check_every=10)
    quiet.stop_before_first_step()  # no signal: goes on
    quiet.restore()


def test_reader_errors_logged_during_a_fallback_are_dropped(tmp_path, mesh, caplog, monkeypatch):
    """Orbax logs a failed read at ERROR with its traceback through absl; the fallback's one line replaces it."""
    ckpt = _two_steps(tmp_path, mesh)
    original = ckpt._manager.restore

    def noisy(step, *args, **kwargs):
        if step == 2:
            try:
                raise OSError(f"{tmp_path / '2' / 'state' / 'd' / 'abc'}: short read")
            except OSError as error:
                logging.getLogger("absl").error("read failed", exc_info=True)
                raise error
        return original(step, *args, **kwargs)

    monkeypatch.setattr(ckpt._manager, "restore", noisy)
    with caplog.at_level(logging.WARNING):
        ckpt.restore(None, _abstract(mesh))
    assert _warnings(caplog) == [
        f"checkpoint {tmp_path / '2'} is unreadable (OSError reading {tmp_path / '2' / 'state' / 'd' / 'abc'}); "
        "trying the previous one",
        f"deleting damaged checkpoint {tmp_path / '2'}; step 1 restored",
    ]
    ckpt.close()

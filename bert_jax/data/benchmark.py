"""Data-pipeline throughput on ONE CPU core: sequences/s at length 128, batch 256.

    python -m bert_jax.data.benchmark [--documents=6000]
    python -m bert_jax.data.benchmark --packing [--max_sequences_per_row=16]  # padding table only

Measures (1) on the fly from raw text, tokenizing included (loader construction + one epoch of
batches, i.e. tokenize + instances + masking for every sequence), (2) on the fly from a
tokenized corpus in memory (instances + masking + batching, later epochs), (3) from
pre-tokenized ArrayRecord shards with dynamic re-masking, (4) the same instances as the original
tool's TFRecords with static masks (every record's CRC32C checked), (5) the offline reader
`read_instances`. The process is pinned to core 0 before anything is imported. `--packing` prints
instead the padding fraction before and after sequence packing (`bert_jax.data.padding`).
"""

import os

os.sched_setaffinity(0, {0})
os.environ["RAYON_NUM_THREADS"] = "1"  # the Rust tokenizer's thread pool: one core

import argparse  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bert_jax.assets import make_sample_corpus  # noqa: E402
from bert_jax.configs.pretraining import data_config  # noqa: E402
from bert_jax.data import corpus as corpus_lib  # noqa: E402
from bert_jax.data import loader as loader_lib  # noqa: E402
from bert_jax.data import padding, read_instances, records  # noqa: E402
from bert_jax.data.create_pretraining_data import create_shards  # noqa: E402
from bert_jax.data.tokenizer import load_tokenizer  # noqa: E402

BATCH = 256


def _config(**kw):
    cfg = data_config()
    cfg.update(dict(eval_input_pattern="unused", phase2_fraction=0.0))
    cfg.update(kw)
    return cfg


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=6000)
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--max_sequences_per_row", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--row_multiple", type=int, default=1)
    args = parser.parse_args()
    if args.packing:
        return packing_table(args.max_sequences_per_row, args.steps, args.row_multiple)
    tmp = pathlib.Path(tempfile.mkdtemp())
    text = tmp / "corpus.txt"
    make_sample_corpus.write_corpus(text, make_sample_corpus.make_documents(args.documents, 3))
    print(f"corpus: {args.documents} documents, {text.stat().st_size / 1e6:.1f} MB, core 0 only")

    # (1) raw text: construction tokenizes everything; one epoch of batches masks everything.
    t0 = time.perf_counter()
    loader = loader_lib.make_pretraining_loader(
        _config(input_pattern=str(text)), global_batch_size=BATCH, num_train_steps=10**6
    )
    loader.batch(0)
    steps = 1
    epoch_size = loader._phases[0][1].epoch_sizes[0]  # the phase-1 stream's first epoch
    while (steps + 1) * BATCH <= epoch_size:
        loader.batch(steps)
        steps += 1
    raw = steps * BATCH / (time.perf_counter() - t0)
    fill = loader.batch(0)["attention_mask"].sum(1).mean()
    print(f"raw text (tokenize + instances + mask): {raw:10,.0f} sequences/s")
    print(f"  (mean {fill:.0f} real tokens per 128-token sequence: {raw * fill:,.0f} tokens/s)")

    # (2) tokenized corpus in memory, later epochs: instances + masking + batching.
    t0 = time.perf_counter()
    for s in range(steps, 3 * steps):
        loader.batch(s)
    mem = 2 * steps * BATCH / (time.perf_counter() - t0)
    print(f"tokenized in memory (instances + mask): {mem:10,.0f} sequences/s")

    # (3) pre-tokenized ArrayRecord shards, dynamically re-masked.
    tok = load_tokenizer(str(corpus_lib.SAMPLE_VOCAB))

    def writer_for(block, current):
        paths = [str(tmp / "shard.array_record"), str(tmp / "shard.tfrecord")]
        return current or records.InstanceWriter(paths)

    create_shards(
        str(text),
        tok,
        writer_for,
        max_seq_length=128,
        max_predictions=20,
        masked_lm_prob=0.15,
        short_seq_prob=0.1,
        dupe_factor=2,
        seed=0,
        whole_word=False,
        documents_per_shard=10**6,
    )
    shard_loader = loader_lib.make_pretraining_loader(
        _config(source="instances", input_pattern=str(tmp / "shard.array_record")),
        global_batch_size=BATCH,
        num_train_steps=10**6,
    )
    shard_loader.batch(0)
    t0 = time.perf_counter()
    for s in range(1, 41):
        shard_loader.batch(s)
    shards = 40 * BATCH / (time.perf_counter() - t0)
    print(f"pre-tokenized shards (read + re-mask):  {shards:10,.0f} sequences/s")

    # (4) the original tool's format: TFRecords, static masks, CRC32C checked per record.
    tf_loader = loader_lib.make_pretraining_loader(
        _config(source="instances", input_pattern=str(tmp / "shard.tfrecord"), masking="static"),
        global_batch_size=BATCH,
        num_train_steps=10**6,
    )
    tf_loader.batch(0)
    t0 = time.perf_counter()
    for s in range(1, 41):
        tf_loader.batch(s)
    tf_rate = 40 * BATCH / (time.perf_counter() - t0)
    print(f"original TFRecords (read, static masks): {tf_rate:9,.0f} sequences/s")

    # (5) the offline reader, one dict per instance.
    t0 = time.perf_counter()
    n = sum(1 for _ in read_instances(str(tmp / "shard.array_record")))
    reader = n / (time.perf_counter() - t0)
    print(f"offline reader read_instances:          {reader:10,.0f} sequences/s ({n} instances)")


def packing_table(max_per_row: int, steps: int, multiple: int) -> None:
    """Prints the padding fraction before/after packing (batch 256, SPFHP, <= max_per_row per row,
    row counts from the loader's buckets in multiples of `multiple`)."""
    # Two phases of `steps` steps each over the bundled corpus, phase 2 from step `steps`.
    cfg = data_config()
    cfg.update(dict(phase2_fraction=0.5))
    loader = loader_lib.make_pretraining_loader(
        cfg, global_batch_size=BATCH, num_train_steps=2 * steps
    )
    rows = padding.padding_table(
        loader,
        (0, steps),
        batch_size=BATCH,
        steps=steps,
        max_per_row=max_per_row,
        multiple=multiple,
    )
    print(
        f"padding fraction, {steps} steps of {BATCH} sequences per phase, <= {max_per_row} per row, "
        f"rows in multiples of {multiple}"
    )
    print("| corpus | length | padding unpacked | padding packed | mean rows | row counts seen |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, length, before, after, n_rows, distinct in rows:
        print(f"| {name} | {length} | {before:.1%} | {after:.1%} | {n_rows:.1f} | {distinct} |")


if __name__ == "__main__":
    main()

"""The CPU benchmark's packed phase-2 step: real tokens per second, packed vs unpacked.

    nice -n 15 python -m bert_jax.benchmark_packing --model=tiny --seq_length=512 --batch_size=64 \\
        --max_predictions=80 --steps=3

One global batch of `batch_size` sequences from a Wikipedia-like corpus (`bert_jax.data.padding`: ~49%
padding at 512, what Krell et al. measured for Wikipedia) with masked-LM predictions at 15% of each
sequence's tokens is trained twice with the trainer's program (`bert_jax.benchmark.build_program`, one
device): as is, one sequence per row, and packed by SPFHP (`bert_jax.data.packing`) into the row bucket that
holds it. Both steps see the same sequences, so real tokens per second compare what each spends per useful
token. A module beside `bert_jax.benchmark` (which has the implementations and references) so that each
stays readable.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from absl import app, flags

from bert_jax import benchmark, sharding, train_lib
from bert_jax.data import packing
from bert_jax.data.padding import wikipedia_like_corpus
from bert_jax.data.streams import CorpusStream

# --model, --batch_size, --seq_length, --max_predictions and --steps are `bert_jax.benchmark`'s flags.
_MODEL, _BATCH, _LENGTH = benchmark._MODEL, benchmark._BATCH, benchmark._LENGTH
_PREDICTIONS, _STEPS = benchmark._PREDICTIONS, benchmark._STEPS
_PER_ROW = flags.DEFINE_integer("max_sequences_per_row", 16, "data.max_sequences_per_row.")

MASKED_LM_PROB = 0.15


def wikipedia_batch(batch_size: int, length: int, predictions: int, vocab: int, seed: int = 0):
    """`batch_size` Wikipedia-like instances of `length` with up to `predictions` masked positions
    (15% of each one's tokens, never [CLS]); token ids below `vocab`."""
    stream = CorpusStream(wikipedia_like_corpus(), length, 0.1, seed, 0, 2, 3)
    feats = stream.rows(0, batch_size)
    feats["input_ids"] = np.where(
        feats["attention_mask"] > 0, feats["input_ids"] % (vocab - 5) + 5, 0
    ).astype(np.int32)
    rng = np.random.default_rng(seed)
    lengths = feats["attention_mask"].sum(1)
    positions = np.zeros((batch_size, predictions), np.int32)
    weights = np.zeros((batch_size, predictions), np.float32)
    for i, n in enumerate(lengths):
        k = min(predictions, max(1, round(MASKED_LM_PROB * n)), n - 1)
        positions[i, :k] = np.sort(rng.choice(np.arange(1, n), k, replace=False))
        weights[i, :k] = 1.0
    feats["masked_lm_positions"] = positions
    feats["masked_lm_ids"] = rng.integers(5, vocab, (batch_size, predictions)).astype(np.int32)
    feats["masked_lm_weights"] = weights
    return feats


def time_train_step(program, batch, steps: int) -> float:
    """Seconds per trainer step on `batch` (host arrays), after a compile and a warm-up step."""
    state = train_lib.create_state(program.model, program.tx, program.abstract, jax.random.key(0))
    device_batch = sharding.host_to_global(batch, program.mesh)
    rng = jax.device_put(train_lib.dropout_key(program.config), program.abstract_rng().sharding)
    compiled = program.train_step.lower(state, device_batch, rng).compile()
    step = functools.partial(lambda c, s: c(s, device_batch, rng)[0], compiled)
    _, seconds, _ = benchmark.time_steps(step, state, steps)
    return seconds


def run(model: str, batch_size: int, length: int, predictions: int, per_row: int, steps: int):
    """{"unpacked": row, "packed": row}, each with rows, seconds, real/total tokens per second."""
    config = benchmark.pretraining_config(model, batch_size, length, predictions, dtype="float32")
    config.data.update(packing=True, max_sequences_per_row=per_row)
    program = benchmark.build_program(config)
    feats = wikipedia_batch(batch_size, length, predictions, program.model_config.vocab_size)
    budget = packing.prediction_budget(length, per_row, predictions, MASKED_LM_PROB)
    packed, _ = packing.pack_features(
        feats,
        max_per_row=per_row,
        buckets=packing.row_buckets(batch_size, per_row),
        predictions_per_row=budget,
    )
    real = int(feats["attention_mask"].sum())
    out = {}
    for name, batch in (("unpacked", feats), ("packed", packed)):
        seconds = time_train_step(program, batch, steps)
        rows = len(batch["input_ids"])
        out[name] = {
            "rows": rows,
            "padding_fraction": 1 - real / (rows * length),
            "seconds": seconds,
            "real_tokens_per_sec": real / seconds,
            "tokens_per_sec": rows * length / seconds,
        }
    return out


def main(argv):
    del argv
    result = run(
        _MODEL.value,
        _BATCH.value,
        _LENGTH.value,
        _PREDICTIONS.value,
        _PER_ROW.value,
        _STEPS.value,
    )
    print(
        f"bert_{_MODEL.value}, {_BATCH.value} Wikipedia-like sequences x {_LENGTH.value}, "
        f"{jax.devices()[0].device_kind}"
    )
    print(f"{'batch':<10}{'rows':>6}{'padding':>9}{'s/step':>9}{'real tok/s':>12}{'tok/s':>10}")
    for name, r in result.items():
        print(
            f"{name:<10}{r['rows']:>6}{r['padding_fraction']:>9.1%}{r['seconds']:>9.3f}"
            f"{r['real_tokens_per_sec']:>12.0f}{r['tokens_per_sec']:>10.0f}"
        )
    speedup = result["packed"]["real_tokens_per_sec"] / result["unpacked"]["real_tokens_per_sec"]
    print(f"packed / unpacked real tokens per second: {speedup:.2f}x")


if __name__ == "__main__":
    app.run(main)

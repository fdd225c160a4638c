"""Regenerates electra_masking.json / electra_masking.npz: statistics of google-research/electra's own dynamic
masking (`pretrain/pretrain_helpers.py` `mask`, run under TensorFlow on a CPU) over bert_jax's ELECTRA rows.

Not part of the test suite (it needs TensorFlow and the original source, neither of which the repository ships).
See README.md in this directory for the exact command.

    PYTHONPATH=$PWD /work/venv/bin/python tests/golden/make_electra_masking.py \
        --original_dir=/work/orig_electra --tf_python=/work/tfvenv/bin/python

This process (bert_jax's environment) builds the rows; a child process in the TensorFlow environment imports the
original's pretrain_helpers, pretrain_data and configure_pretraining, unmodified, and runs `mask(config, inputs,
config.mask_prob)` exactly as run_pretraining.py calls it, in a TF1 graph (`tf.compat.v1`, as the original's
Estimator runs it), once per graph seed. TF's random draws cannot be replayed, so what is kept is what
characterises the rules (`summarize`, which tests/electra_masking_test.py applies to bert_jax's masks too).
"""

import argparse
import hashlib
import json
import pathlib
import re
import subprocess
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
SEQ_LENGTH = 128  # electra_small's
NUM_ROWS = 2000
SEEDS = (1, 2, 3, 4, 5)
PROBE_REPEATS = 500
# The count rule over every real length: (name, max_seq_length, mask_prob) of the released recipes (max
# predictions from configure_pretraining's own formula).
SWEEPS = (("small", 128, 0.15), ("base", 512, 0.15), ("large", 512, 0.25))

# Run in the TensorFlow environment: argv = original_dir, vocab, jobs.npz, out.npz.
CHILD = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import types
import tensorflow.compat.v1 as tf
# model/modeling.py imports tensorflow.contrib (gone in TF 2) for layer_norm only, which masking never calls.
sys.modules["tensorflow.contrib"] = types.SimpleNamespace(layers=None)
import configure_pretraining
from pretrain import pretrain_data, pretrain_helpers

tf.disable_eager_execution()
vocab, jobs, out = sys.argv[2], np.load(sys.argv[3]), {}
for name in sorted({k.split("/")[0] for k in jobs.files}):
    ids, mask = jobs[name + "/input_ids"], jobs[name + "/input_mask"]
    seeds, repeats = jobs[name + "/seeds"].tolist(), int(jobs[name + "/repeats"])
    config = configure_pretraining.PretrainingConfig(
        "golden", "/nonexistent", max_seq_length=ids.shape[1], mask_prob=float(jobs[name + "/mask_prob"]),
        vocab_file=vocab)
    results = []
    for seed in seeds:
        graph = tf.Graph()
        with graph.as_default():
            tf.set_random_seed(seed)
            inputs = pretrain_data.features_to_inputs({
                "input_ids": tf.constant(ids, tf.int32), "input_mask": tf.constant(mask, tf.int32),
                "segment_ids": tf.zeros(ids.shape, tf.int32)})
            masked = pretrain_helpers.mask(config, inputs, config.mask_prob)
            fetch = [masked.input_ids, masked.masked_lm_positions, masked.masked_lm_ids,
                     masked.masked_lm_weights]
            with tf.Session(graph=graph) as sess:
                results += [sess.run(fetch) for _ in range(repeats)]
    for i, key in enumerate(["input_ids", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights"]):
        out[name + "/" + key] = np.stack([r[i] for r in results])
    out[name + "/max_predictions"] = np.int64(config.max_predictions_per_seq)
np.savez_compressed(sys.argv[4], **out)
print(tf.__version__)
"""


def electra_rows():
    """The rows both sides mask: the bundled corpus as the loader's ELECTRA examples of 128 tokens (seed 0),
    the first NUM_ROWS of the stream; and the tokenizer."""
    from bert_jax.data import corpus as corpus_lib
    from bert_jax.data import electra_examples
    from bert_jax.data.instances import TokenizedCorpus
    from bert_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(corpus_lib.SAMPLE_VOCAB), True)
    docs = corpus_lib.iter_text_documents(str(corpus_lib.SAMPLE_CORPUS), corpus_lib.CorpusStats())
    corpus = TokenizedCorpus.from_documents(docs, tok)
    ids = {"cls_id": tok.cls_id, "sep_id": tok.sep_id, "pad_id": tok.pad_id}
    stream = electra_examples.ElectraExampleStream(corpus, SEQ_LENGTH, 0, 0, **ids)
    return stream.rows(0, NUM_ROWS), tok


def fingerprint(input_ids, attention_mask) -> str:
    data = np.ascontiguousarray(input_ids, np.int32).tobytes()
    return hashlib.sha256(
        data + np.ascontiguousarray(attention_mask, np.int32).tobytes()
    ).hexdigest()


def probe_rows(rows, tok):
    """Rows that show which tokens are candidates: real rows with [UNK], [MASK], the [PAD] id, [CLS] and [SEP]
    written inside the text, a row of one word, a row of [UNK]s and a row whose only candidate is one word among
    [MASK]s (two predictions, one candidate: draws with replacement)."""
    ids = rows["input_ids"][:12].copy()
    mask = rows["attention_mask"][:12].copy()
    specials = [tok.unk_id, tok.mask_id, tok.pad_id, tok.cls_id, tok.sep_id]
    for r in range(12):
        ids[r, 3 + r : 8 + r] = np.roll(specials, r)
    word = ids[0, 1]
    extra = np.zeros((4, SEQ_LENGTH), ids.dtype)
    extra_mask = np.zeros_like(extra)
    for r, body in enumerate(
        [[word], [tok.unk_id] * 40, [word] + [tok.mask_id] * 11, [word] * 2 + [tok.unk_id] * 20]
    ):
        row = [tok.cls_id, *body, tok.sep_id]
        extra[r, : len(row)], extra_mask[r, : len(row)] = row, 1
    return np.concatenate([ids, extra]), np.concatenate([mask, extra_mask])


def summarize(
    input_ids, attention_mask, out, *, cls_id, sep_id, mask_id, max_predictions, mask_prob
) -> dict:
    """Statistics of masks drawn over the same rows: `out` holds [draws, rows, ...] arrays `input_ids` (masked),
    `masked_lm_positions`, `masked_lm_ids`, `masked_lm_weights`."""
    draws, n, length = out["input_ids"].shape
    real = attention_mask.astype(bool)
    candidates = real & ~np.isin(input_ids, [cls_id, sep_id, mask_id])
    num_tokens = real.sum(1)
    pos, ids = out["masked_lm_positions"].astype(np.int64), out["masked_lm_ids"]
    valid = out["masked_lm_weights"] > 0
    count = valid.sum(2)
    # Slot counts per (draw, row, position).
    hits = np.zeros((draws * n, length), np.int64)
    flat_rows = np.broadcast_to(np.arange(draws * n)[:, None], (draws * n, pos.shape[2]))
    np.add.at(hits, (flat_rows[valid.reshape(draws * n, -1)], pos[valid]), 1)
    hits = hits.reshape(draws, n, length)
    chosen = hits > 0
    now = out["input_ids"]
    originals = np.take_along_axis(np.broadcast_to(input_ids[None], now.shape), pos, axis=2)
    became_mask = chosen & (now == mask_id)
    kept = chosen & (now == input_ids[None])
    ordered = np.where(valid, pos, length)
    multi = count >= 2
    increasing = np.all((np.diff(ordered, axis=2) > 0) | ~valid[:, :, 1:], axis=2)
    num_cand = candidates.sum(1)
    # Expected slot draws at each position under uniform draws over the row's candidates.
    per_candidate = np.where(candidates, (count.mean(0) / np.maximum(num_cand, 1))[:, None], 0.0)
    expected_by_position = draws * per_candidate.sum(0)
    by_position = hits.sum((0, 1))
    distinct = chosen.sum()
    # Expected distinct positions with replacement: C (1 - (1 - 1/C)^k) per row.
    c, k = np.maximum(num_cand, 1)[None].astype(float), count.astype(float)
    expected_distinct = (c * (1 - (1 - 1 / c) ** k)).sum()
    return {
        "draws": int(draws),
        "rows": int(n),
        "count_is_deterministic": bool(np.all(count == count[:1])),
        "count_rule_max_1_min_N_round_half_even_f32": bool(
            np.all(
                count[0]
                == np.clip(
                    np.rint(num_tokens.astype(np.float32) * np.float32(mask_prob)),
                    1,
                    max_predictions,
                )
            )
        ),
        "valid_slots_first": bool(np.all(valid == (np.arange(pos.shape[2]) < count[..., None]))),
        "padding_slots_position_0_id_0": bool(
            np.all(pos[~valid] == 0) and np.all(ids[~valid] == 0)
        ),
        "ids_are_the_originals": bool(np.all((ids == originals)[valid])),
        "chosen_outside_candidates": int((chosen & ~candidates[None]).sum()),
        "changed_outside_chosen": int(((now != input_ids[None]) & ~chosen).sum()),
        "chosen_neither_mask_nor_kept": int((chosen & ~became_mask & ~kept).sum()),
        "slots": int(valid.sum()),
        "distinct_positions": int(distinct),
        "expected_distinct_with_replacement": float(expected_distinct),
        "rows_with_a_repeated_position": int((chosen.sum(2) < count).sum()),
        "mask_share_single_slot_positions": float(became_mask[hits == 1].mean()),
        "mask_share_all_positions": float(became_mask.sum() / distinct),
        "multi_slot_rows_strictly_increasing": float(increasing[multi].mean()),
        "arrays": {
            "count_per_row": count[0],
            "selections_by_position": by_position,
            "expected_by_position": expected_by_position,
            "ever_chosen": chosen.any(0),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--original_dir", required=True)
    parser.add_argument("--tf_python", required=True)
    args = parser.parse_args()
    from bert_jax.data import corpus as corpus_lib

    rows, tok = electra_rows()
    probe_ids, probe_mask = probe_rows(rows, tok)
    special = {"cls_id": tok.cls_id, "sep_id": tok.sep_id, "mask_id": tok.mask_id}
    jobs = {}

    def job(name, ids, mask, prob, seeds, repeats=1):
        jobs.update(
            {f"{name}/input_ids": ids, f"{name}/input_mask": mask, f"{name}/mask_prob": prob}
        )
        jobs.update({f"{name}/seeds": np.asarray(seeds), f"{name}/repeats": repeats})

    job("rows", rows["input_ids"], rows["attention_mask"], 0.15, SEEDS)
    job(
        "probe",
        np.tile(probe_ids, (PROBE_REPEATS, 1)),
        np.tile(probe_mask, (PROBE_REPEATS, 1)),
        0.15,
        [7],
    )
    for name, length, prob in SWEEPS:
        # One row per real length 3..length: [CLS] words [SEP].
        lengths = np.arange(3, length + 1)
        mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
        ids = np.where(mask > 0, 2000, 0)
        ids[:, 0] = tok.cls_id
        ids[np.arange(len(lengths)), lengths - 1] = tok.sep_id
        job(f"sweep_{name}", ids, mask, prob, [11])
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/jobs.npz", **jobs)
        run = [args.tf_python, "-c", CHILD, args.original_dir, str(corpus_lib.SAMPLE_VOCAB)]
        done = subprocess.run([*run, f"{tmp}/jobs.npz", f"{tmp}/out.npz"], capture_output=True)
        if done.returncode:
            raise SystemExit(done.stderr.decode()[-3000:])
        tf_version = done.stdout.decode().split()[-1]
        out = dict(np.load(f"{tmp}/out.npz"))

    def outputs(name, n):
        return {
            k: out[f"{name}/{k}"].reshape(-1, n, out[f"{name}/{k}"].shape[-1])
            for k in ("input_ids", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights")
        }

    n_pred = int(out["rows/max_predictions"])
    stats = summarize(
        rows["input_ids"], rows["attention_mask"], outputs("rows", NUM_ROWS),
        max_predictions=n_pred, mask_prob=0.15, **special,
    )  # fmt: skip
    probe = summarize(
        probe_ids, probe_mask, outputs("probe", len(probe_ids)),
        max_predictions=n_pred, mask_prob=0.15, **special,
    )  # fmt: skip
    sweeps = {}
    for name, length, prob in SWEEPS:
        weights = out[f"sweep_{name}/masked_lm_weights"][0]
        sweeps[name] = {
            "seq_length": length,
            "mask_prob": prob,
            "max_predictions": int(out[f"sweep_{name}/max_predictions"]),
            "first_length": 3,
            "count_by_length": (weights > 0).sum(1).tolist(),
        }
    arrays = {f"rows_{k}": v for k, v in stats.pop("arrays").items()}
    arrays.update({f"probe_{k}": v for k, v in probe.pop("arrays").items()})
    golden = {
        "original": "google-research/electra 8a46635f32083ada044d7e9ad09604742600ee7b pretrain/pretrain_helpers.py mask",
        "tensorflow": tf_version,
        "seq_length": SEQ_LENGTH,
        "max_predictions": n_pred,
        "seeds": list(SEEDS),
        "rows_sha256": fingerprint(rows["input_ids"], rows["attention_mask"]),
        "rows": stats,
        "probe_repeats": PROBE_REPEATS,
        "probe": probe,
        "sweeps": sweeps,
    }
    text = json.dumps(golden, indent=1)
    # Lists of numbers on one line each.
    text = re.sub(
        r"\[[\d\s,.]*\]", lambda m: re.sub(r"\s+", "", m.group()).replace(",", ", "), text
    )
    (HERE / "electra_masking.json").write_text(text + "\n")
    np.savez_compressed(
        HERE / "electra_masking.npz",
        probe_input_ids=probe_ids.astype(np.int32),
        probe_attention_mask=probe_mask.astype(np.int8),
        **arrays,
    )


if __name__ == "__main__":
    main()

"""Getting a model out: `convert_checkpoint` writes any checkpoint in another layout and checks the result
numerically (both models on a fixed batch). The command over it is `python -m bert_jax.convert`."""

from __future__ import annotations

import dataclasses

import numpy as np

from bert_jax import checkpoint, layouts, workdir
from bert_jax.models import registry

FORMATS = ("transformers", "bert_jax", "tf1")
# The outputs compared after a conversion, per head.
_OUTPUTS = {
    "none": ("last_hidden_state", "pooler_output"),
    "pretraining": ("prediction_logits", "seq_relationship_logits", "sop_logits"),
    "classification": ("logits",),
    "span": ("start_logits", "end_logits"),
    "token": ("logits",),
    "multiple_choice": ("logits",),
    # ELECTRA's pretraining model (generator + discriminator; TF1 is its one layout).
    "rtd": ("generator_logits", "logits"),
    "masked_lm": ("logits",),
}


# ----------------------------------------------------------------------------------------------------------
# The bert_jax layout: a workdir with parameters only.
# ----------------------------------------------------------------------------------------------------------
def write_bert_jax(out, params, ckpt: layouts.Checkpoint, head: str) -> None:
    """OUT/checkpoints/0 (parameters only, Orbax) + the tokenizer files in OUT/tokenizer/: a checkpoint that
    `load_pretrained` and fine-tuning's init_checkpoint read like a workdir (see `bert_jax.workdir`)."""
    out = workdir.absolute(out)
    if (out / "checkpoints").exists():
        raise ValueError(f"{out / 'checkpoints'}: already exists; choose a new --to directory")
    (out / workdir.TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
    layouts.write_tokenizer(
        out / workdir.TOKENIZER_DIR, ckpt.tokenizer, ckpt.config, ckpt.do_lower_case
    )
    # A byte-level BPE is two files (vocab.json, merges.txt): the directory names it.
    bpe = (out / workdir.TOKENIZER_DIR / "merges.txt").exists()
    stored = {
        "mode": "export",
        "head": head,
        "family": registry.family_of(ckpt.config).name,
        "model": dataclasses.asdict(ckpt.config),
        "tokenizer": {
            "path": str(out / workdir.TOKENIZER_DIR / "vocab.txt")
            if not bpe
            else str(out / workdir.TOKENIZER_DIR),
            "do_lower_case": layouts.tokenizer_lowercases(ckpt.tokenizer),
        },
        "num_labels": layouts.infer_num_labels(params, head),
        "id2label": ckpt.labels,
        "source": ckpt.source,
    }
    writer = checkpoint.Checkpointer(
        str(out / "checkpoints"), keep=1, save_interval_steps=1, async_save=False
    )
    try:
        writer.save(0, {"params": params}, data_state={}, config=stored, force=True)
    finally:
        writer.close()


# ----------------------------------------------------------------------------------------------------------
# The check: both models on one fixed batch.
# ----------------------------------------------------------------------------------------------------------
def fixed_batch(config: registry.Config, tokenizer) -> dict[str, np.ndarray]:
    """Three sequences of random ids (one unpadded, two padded) with both segments: the same every run."""
    rng = np.random.default_rng(0)
    # RoBERTa's positions start past its padding id: its longest input is `max_length`.
    length = min(24, getattr(config, "max_length", config.max_position_embeddings))
    ids = rng.integers(0, tokenizer.vocab_size, (3, length)).astype(np.int32)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, n in enumerate([length, length - 5, length // 2]):
        mask[row, :n] = 1
        types[row, n // 2 : n] = min(1, config.type_vocab_size - 1)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def sample_texts(tokenizer) -> list[str]:
    """Text made of the vocabulary's own words, some capitalised, to compare tokenizers on."""
    words = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    words = [w for w in words if w and w.isalpha() and not w.startswith("[")][:40]
    return [" ".join(words[:20]).capitalize() + ".", " ".join(words[20:]).upper() + " Ünïcödé!"]


def _transformers_outputs(out, config, head, names, batch):
    import torch
    import transformers

    cls = getattr(transformers, layouts.architecture(config, head))
    reference = cls.from_pretrained(str(out)).eval()
    inputs = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}
    if (
        head == "multiple_choice"
    ):  # the batch's rows are one question's choices: [1, choices, length]
        inputs = {k: v[None] for k, v in inputs.items()}
    with torch.no_grad():
        outputs = reference(**inputs)
    # Multiple choice's [1, choices] scores are bert_jax's [rows, 1].
    theirs = {k: outputs[k].numpy().reshape(-1, 1) if head == "multiple_choice" else outputs[k].numpy()
              for k in names}  # fmt: skip
    return theirs, transformers.AutoTokenizer.from_pretrained(str(out))


def check(out, fmt, ckpt, model, params, head, tolerance) -> float:
    """Runs the source model and the written one on `fixed_batch`; returns the max relative difference."""
    batch = fixed_batch(ckpt.config, ckpt.tokenizer)
    ours = model.apply({"params": params}, **batch)
    # A family's own output names (RoBERTa's masked LM gives transformers' `logits` alone).
    names = [k for k in _OUTPUTS[head] if k in ours] or ["logits"]
    ours = {k: np.asarray(ours[k], np.float32) for k in names}
    texts = sample_texts(ckpt.tokenizer)
    theirs = None
    if fmt == "transformers":
        try:
            theirs, their_tokenizer = _transformers_outputs(out, ckpt.config, head, names, batch)
            their_ids = [their_tokenizer(t)["input_ids"] for t in texts]
            reference = (
                f"transformers {layouts.architecture(ckpt.config, head)}.from_pretrained(OUT)"
            )
        except ImportError:  # no torch/transformers here: bert_jax's reader is the reference
            pass
    if theirs is None:
        written = layouts.read_checkpoint(out)
        model2, params2 = layouts.build(written, head)
        theirs = model2.apply({"params": params2}, **batch)
        their_ids = [
            written.tokenizer([t], truncation=False)["input_ids"][0].tolist() for t in texts
        ]
        reference = f"bert_jax reading {out}"
    # Whole texts: transformers' tokenizer does not cut them to the model's length either.
    our_ids = [ckpt.tokenizer([t], truncation=False)["input_ids"][0].tolist() for t in texts]
    if our_ids != their_ids:
        raise ValueError(
            f"{out}: the written tokenizer gives other ids than the source's ({reference})"
        )
    scale = max(1.0, *(float(np.abs(v).max()) for v in ours.values()))
    diff = max(float(np.abs(ours[k] - np.asarray(theirs[k], np.float32)).max()) for k in ours)
    print(
        f"check: {', '.join(ours)} of the source vs {reference} on a fixed batch: "
        f"max |difference| {diff:.3g} ({diff / scale:.3g} relative; tolerance {tolerance:g})"
    )
    if diff / scale > tolerance:
        raise ValueError(
            f"{out}: conversion check failed: max relative difference {diff / scale:.3g} > {tolerance:g}"
        )
    return diff


# ----------------------------------------------------------------------------------------------------------
# The conversion.
# ----------------------------------------------------------------------------------------------------------
def convert_checkpoint(
    source, out, fmt, *, head="auto", do_lower_case=None, step=None, tolerance=1e-4
):
    """Converts `source` (any layout) to `fmt` in `out`, then checks it numerically; returns the max
    difference. Raises ValueError / FileNotFoundError with one line for bad input or a failed check."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r} is not one of {FORMATS}")
    ckpt = layouts.read_checkpoint(source, do_lower_case=do_lower_case, step=step)
    head = ckpt.head if head == "auto" else head
    ckpt = layouts.for_head(ckpt, head)
    if fmt == "tf1" and head == "token":
        raise ValueError("--format=tf1: Google's code has no token-classification head")
    model, params = layouts.build(ckpt, head)
    if fmt == "transformers":
        layouts.save_pretrained(
            out,
            params,
            ckpt.config,
            head,
            tokenizer=ckpt.tokenizer,
            do_lower_case=ckpt.do_lower_case,
            id2label=ckpt.labels if head in ("classification", "token") else None,
        )
    elif fmt == "tf1":
        layouts.save_tf1(out, params, ckpt.config, head, ckpt.tokenizer)
    else:
        write_bert_jax(out, params, ckpt, head)
    if ckpt.skipped:
        print(
            f"skipped {len(ckpt.skipped)} stored tensors that are not parameters (optimizer slots, step)"
        )
    print(f"wrote {fmt} ({head} head) from {ckpt.source} to {out}")
    return check(out, fmt, ckpt, model, params, head, tolerance)

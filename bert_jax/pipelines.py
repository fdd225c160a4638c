"""Two small uses of a loaded model: filling in [MASK] tokens, and sentence embeddings by mean pooling.

model, params, tokenizer = bert_jax.load_pretrained(PATH, head="pretraining")
fill_mask(model, params, tokenizer, "the capital of france is [MASK].")
model, params, tokenizer = bert_jax.load_pretrained(MINILM)   # head="none"
sentence_embeddings(model, params, tokenizer, ["A sentence.", "Another one."])
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np


def fill_mask(model, params, tokenizer, texts: str | Sequence[str], top_k: int = 5):
    """The `top_k` (token, probability) candidates for each [MASK] in each text.

    Needs a "pretraining" model (its MLM head). Returns, per text, one list per [MASK] (left to right) of
    (token, probability) pairs, most probable first; a single string gives the list for that text only.
    """
    single = isinstance(texts, str)
    batch = tokenizer([texts] if single else list(texts))
    outputs = model.apply({"params": params}, **batch)
    if "prediction_logits" not in outputs:
        raise ValueError(
            'fill_mask needs a model with the MLM head (load it with head="pretraining")'
        )
    probs = np.asarray(jax.nn.softmax(outputs["prediction_logits"], axis=-1))
    mask_id = tokenizer.token_to_id("[MASK]")
    results = []
    for row, ids in enumerate(batch["input_ids"]):
        per_mask = []
        for position in np.flatnonzero(ids == mask_id):
            best = np.argsort(-probs[row, position], kind="stable")[:top_k]
            per_mask.append(
                [(tokenizer.id_to_token(int(i)), float(probs[row, position, i])) for i in best]
            )
        if not per_mask:
            raise ValueError(f"no [MASK] token in text {row}: {texts if single else texts[row]!r}")
        results.append(per_mask)
    return results[0] if single else results


def sentence_embeddings(
    model, params, tokenizer, texts: Sequence[str], *, normalize: bool = True, max_length=None
) -> np.ndarray:
    """[len(texts), hidden] sentence vectors: the mean of the last layer over each text's real tokens
    (padding excluded), L2-normalised when `normalize` (as sentence-transformers' all-MiniLM-L6-v2)."""
    batch = tokenizer(list(texts), max_length=max_length)
    hidden = np.asarray(model.apply({"params": params}, **batch)["last_hidden_state"], np.float32)
    mask = batch["attention_mask"][..., None].astype(np.float32)
    pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    if normalize:
        pooled /= np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled

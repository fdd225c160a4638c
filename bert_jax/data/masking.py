"""Masked-LM masking of whole batches at once, as the original create_pretraining_data does it.

* `masked_lm_prob` (15%) of the tokens, counting [CLS]/[SEP] as the tool does, at most
  `max_predictions_per_seq`, at least 1, are predicted; never [CLS], [SEP] or padding;
* of those 80% become [MASK], 10% a random token of the WHOLE vocabulary (special tokens
  included, as the original draws from `vocab.keys()`), 10% stay unchanged;
* with whole-word masking, words are visited in random order and a word that would overflow
  the budget is skipped while later, shorter words can still fill it (the original's
  `continue`), so the budget is met whenever any combination of remaining words allows it
  greedily.

Used for dynamic masking by the loader and for static masks by the offline tool. Pure NumPy.
"""

from __future__ import annotations

import numpy as np


def _choose_pieces(keys, special, num_pred, max_predictions):
    """Per row, the `num_pred` non-special positions with the smallest keys."""
    n, length = keys.shape
    keys = np.where(special, np.inf, keys)
    order = np.argsort(keys, axis=1, kind="stable")[:, :max_predictions]
    chosen = np.zeros((n, length), bool)
    take = np.arange(order.shape[1])[None, :] < num_pred[:, None]
    np.put_along_axis(chosen, order, take, axis=1)
    return chosen


def _choose_words(keys, special, cont, num_pred):
    """Whole words in random order, each taken if it still fits the row's budget.

    A word is a start piece plus the continuation pieces after it. The greedy pass runs over
    word ranks for all rows at once and stops as soon as every row is full or out of words.
    """
    n, length = keys.shape
    starts = ~special & ~cont
    word_id = np.cumsum(starts, axis=1) - 1  # 0-based word index of each piece (-1 before any)
    in_word = ~special & (word_id >= 0)
    num_words = starts.sum(1)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, length))
    word_len = np.zeros((n, length), np.int64)
    np.add.at(word_len, (rows[in_word], word_id[in_word]), 1)
    # Each word's random key is the key of its slot; words beyond the row's count sort last.
    slot = np.arange(length)[None, :]
    word_key = np.where(slot < num_words[:, None], keys, np.inf)
    order = np.argsort(word_key, axis=1, kind="stable")
    lens = np.take_along_axis(word_len, order, axis=1)
    taken = np.zeros((n, length), bool)
    used = np.zeros(n, np.int64)
    for k in range(length):
        live = (used < num_pred) & (k < num_words)
        if not live.any():
            break
        fits = live & (used + lens[:, k] <= num_pred)
        taken[:, k] = fits
        used += np.where(fits, lens[:, k], 0)
    word_taken = np.zeros((n, length), bool)
    np.put_along_axis(word_taken, order, taken, axis=1)
    return in_word & np.take_along_axis(word_taken, np.maximum(word_id, 0), axis=1)


def mask_tokens(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    max_predictions: int,
    masked_lm_prob: float,
    special_ids,
    mask_id: int,
    vocab_size: int,
    is_continuation: np.ndarray | None = None,
    mask_token_fraction: float = 0.8,
    random_token_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """Masks a batch of unmasked instances.

    Returns the masked `input_ids` and `masked_lm_positions`, `masked_lm_ids` (int32),
    `masked_lm_weights` (float32, 0 on padding predictions) [N, max_predictions], positions in
    increasing order. `special_ids` are never predicted. With `is_continuation` (bool per vocab
    id), whole words are masked (see the module docstring). `mask_token_fraction` and
    `random_token_fraction`: of the predicted tokens, the shares that become [MASK] and a random token (BERT's
    0.8 and 0.1; ELECTRA's `pretrain_helpers.mask` 0.85 and 0); the rest stay unchanged.
    """
    n, length = input_ids.shape
    special = np.isin(input_ids, np.asarray(special_ids)) | (attention_mask == 0)
    num_tokens = attention_mask.sum(1)
    num_pred = np.clip(np.rint(num_tokens * masked_lm_prob), 1, max_predictions).astype(np.int64)
    num_pred = np.minimum(num_pred, (~special).sum(1))
    keys = rng.random((n, length))
    if is_continuation is None:
        chosen = _choose_pieces(keys, special, num_pred, max_predictions)
    else:
        # A continuation piece right after a special token starts its own word.
        prev_special = np.concatenate([np.ones((n, 1), bool), special[:, :-1]], axis=1)
        cont = is_continuation[input_ids] & ~special & ~prev_special
        chosen = _choose_words(keys, special, cont, num_pred)
    # Positions in increasing order, padded to max_predictions.
    pos_key = np.where(chosen, np.arange(length)[None, :], length)
    positions = np.sort(pos_key, axis=1)[:, :max_predictions]
    if positions.shape[1] < max_predictions:
        pad = np.full((n, max_predictions - positions.shape[1]), length)
        positions = np.concatenate([positions, pad], axis=1)
    valid = positions < length
    positions = np.where(valid, positions, 0)
    original = np.take_along_axis(input_ids, positions, axis=1)
    choice = rng.random((n, max_predictions))
    random_tok = rng.integers(0, vocab_size, (n, max_predictions))
    random_below = mask_token_fraction + random_token_fraction
    replaced = np.where(
        choice < mask_token_fraction,
        mask_id,
        np.where(choice < random_below, random_tok, original),
    )
    masked = input_ids.copy()
    rows = np.broadcast_to(np.arange(n)[:, None], positions.shape)
    masked[rows[valid], positions[valid]] = replaced[valid]
    return {
        "input_ids": masked,
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": np.where(valid, original, 0).astype(np.int32),
        "masked_lm_weights": valid.astype(np.float32),
    }


def unmask(features: dict[str, np.ndarray]) -> np.ndarray:
    """Restores the original `input_ids` of a masked batch (to re-mask it dynamically)."""
    ids = features["input_ids"].copy()
    pos, orig = features["masked_lm_positions"], features["masked_lm_ids"]
    valid = features["masked_lm_weights"] > 0
    rows = np.broadcast_to(np.arange(len(ids))[:, None], pos.shape)
    ids[rows[valid], pos[valid]] = orig[valid]
    return ids

"""Masked-LM masking of whole batches at once, as the original create_pretraining_data does it.

* `masked_lm_prob` (15%) of the tokens, counting [CLS]/[SEP] as the tool does, at most
  `max_predictions_per_seq`, at least 1, are predicted; never [CLS], [SEP] or padding;
* of those 80% become [MASK], 10% a random token of the WHOLE vocabulary (special tokens
  included, as the original draws from `vocab.keys()`), 10% stay unchanged;
* with whole-word masking, words are visited in random order and a word that would overflow
  the budget is skipped while later, shorter words can still fill it (the original's
  `continue`), so the budget is met whenever any combination of remaining words allows it
  greedily;
* with `max_ngram` > 1, ALBERT's n-gram masking (Lan et al. 2020, section 4.1; `_choose_ngrams`).

Used for dynamic masking by the loader and for static masks by the offline tool. RoBERTa masks with
fairseq's own draws instead (`fairseq_replay`: specials maskable, a randomly rounded count, per-position
80/10/10). ELECTRA masks with `mask_tokens_electra`: electra's `pretrain_helpers.mask` (draws with
replacement, [UNK] maskable, 85% [MASK] / 15% kept per slot). Pure NumPy.
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


def ngram_probabilities(max_ngram: int) -> np.ndarray:
    """ALBERT's p(n) for n = 1..max_ngram: proportional to 1/n (favor_shorter_ngram, its default)."""
    p = 1.0 / np.arange(1, max_ngram + 1)
    return p / p.sum()


def _choose_ngrams(keys, special, cont, num_pred, max_ngram, rng):
    """ALBERT's n-gram masking (google-research/albert, create_masked_lm_predictions), all rows at once.

    The candidates are whole words (a start piece and its continuations, never [CLS]/[SEP]/padding), in one
    list per row that runs across the [SEP] between the segments. They are visited in random order (the
    original shuffles one entry per word); at each, n is drawn with p(n) proportional to 1/n, the n-gram is the
    word and the n - 1 words after it (fewer at the row's end), and if it would overflow the row's budget the
    next shorter n-gram is tried down to the word alone; one that still overflows, or that overlaps a chosen
    n-gram, is skipped. A row stops when its budget is met.
    """
    n, length = keys.shape
    starts = ~special & ~cont
    word_id = np.cumsum(starts, axis=1) - 1
    in_word = ~special & (word_id >= 0)
    num_words = starts.sum(1)
    rows = np.arange(n)
    word_len = np.zeros((n, length), np.int64)
    np.add.at(word_len, (np.broadcast_to(rows[:, None], (n, length))[in_word], word_id[in_word]), 1)
    # cum[r, w] = pieces in words < w; indices past the last word clamp to it (the n-gram ends at the row's end).
    cum = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(word_len, axis=1)], axis=1)
    slot = np.arange(length)[None, :]
    order = np.argsort(np.where(slot < num_words[:, None], keys, np.inf), axis=1, kind="stable")
    draws = rng.choice(
        np.arange(1, max_ngram + 1), size=(n, length), p=ngram_probabilities(max_ngram)
    )
    covered = np.zeros((n, length + max_ngram), bool)
    used = np.zeros(n, np.int64)
    for k in range(length):
        live = (used < num_pred) & (k < num_words)
        if not live.any():
            break
        first = order[:, k]

        def size(m, first=first):
            return cum[rows, np.minimum(first + m, num_words)] - cum[rows, first]

        # The longest n-gram no longer than the draw that fits the budget (0: none fits).
        chosen = np.zeros(n, np.int64)
        for m in range(max_ngram, 0, -1):
            fits = (chosen == 0) & (m <= draws[:, k]) & (used + size(m) <= num_pred)
            chosen = np.where(fits, m, chosen)
        overlap = np.zeros(n, bool)
        for j in range(max_ngram):
            overlap |= (j < chosen) & covered[rows, first + j]
        take = live & (chosen > 0) & ~overlap
        for j in range(max_ngram):
            mark = take & (j < chosen) & (first + j < num_words)
            covered[rows[mark], (first + j)[mark]] = True
        used += np.where(take, size(chosen), 0)
    return in_word & np.take_along_axis(covered, np.maximum(word_id, 0), axis=1)


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
    max_ngram: int = 1,
    mask_token_fraction: float = 0.8,
    random_token_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """Masks a batch of unmasked instances.

    Returns the masked `input_ids` and `masked_lm_positions`, `masked_lm_ids` (int32),
    `masked_lm_weights` (float32, 0 on padding predictions) [N, max_predictions], positions in
    increasing order. `special_ids` are never predicted. With `is_continuation` (bool per vocab
    id), whole words are masked (see the module docstring). `max_ngram` > 1: ALBERT's n-gram masking
    (`_choose_ngrams`) over whole words (over pieces without `is_continuation`).
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
    if max_ngram > 1:
        cont = np.zeros_like(special)
        if is_continuation is not None:
            prev_special = np.concatenate([np.ones((n, 1), bool), special[:, :-1]], axis=1)
            cont = is_continuation[input_ids] & ~special & ~prev_special
        chosen = _choose_ngrams(keys, special, cont, num_pred, max_ngram, rng)
    elif is_continuation is None:
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


def fairseq_max_predictions(seq_length: int, mask_prob: float = 0.15) -> int:
    """The most positions fairseq's masking (`fairseq_replay`) predicts in a row of `seq_length` real tokens:
    the largest integer below `mask_prob * seq_length + 1` (e.g. 77 at 512, 20 at 128, 10 at 64)."""
    return int(np.ceil(mask_prob * seq_length + 1)) - 1


def electra_num_predictions(num_tokens, mask_prob: float, max_predictions: int) -> np.ndarray:
    """ELECTRA's prediction count per row of `num_tokens` real tokens ([CLS]/[SEP] counted):
    max(1, min(max_predictions, round(num_tokens * mask_prob))), the product in float32 and rounded half to even,
    as pretrain_helpers.mask computes it with tf.round (e.g. 2 at 10 tokens, 4 at 30, 19 from 124 up at 15%)."""
    product = np.asarray(num_tokens).astype(np.float32) * np.float32(mask_prob)
    return np.clip(np.rint(product).astype(np.int64), 1, max_predictions)


def mask_tokens_electra(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    max_predictions: int,
    mask_prob: float,
    cls_id: int,
    sep_id: int,
    mask_id: int,
    mask_token_fraction: float = 0.85,
) -> dict[str, np.ndarray]:
    """ELECTRA's dynamic masking: google-research/electra's `pretrain_helpers.mask` (as run_pretraining.py calls
    it: uniform proposal, nothing disallowed) over a padded batch, with the outputs of `mask_tokens`.

    * candidates: every real token (`attention_mask` 1) except [CLS], [SEP] and [MASK]; [UNK] and [PAD] ids inside
      the mask are candidates, as in the original; single tokens, never whole words;
    * `electra_num_predictions` slots per row, each an independent uniform draw over the row's candidates WITH
      replacement (tf.random.categorical), so a position can fill several slots; every slot is a prediction
      (weight 1), duplicates included;
    * layout: slots in draw order (not sorted), the row's slots first, then padding slots (position 0, id 0,
      weight 0), as `tf.sequence_mask(num_to_predict, N)` lays them out;
    * each slot independently becomes [MASK] with probability `mask_token_fraction`, else keeps its token (no
      random tokens: the generator makes the replacements); a position drawn by several slots is [MASK] if any of
      them is (the original's scatter_update writes it once).

    A row without candidates (no text) gets only padding slots; the original divides by zero there.
    """
    n, length = input_ids.shape
    real = attention_mask.astype(bool)
    candidates = real & ~np.isin(input_ids, np.asarray([cls_id, sep_id, mask_id]))
    num_candidates = candidates.sum(1)
    num_pred = electra_num_predictions(real.sum(1), mask_prob, max_predictions)
    # Each row's candidate positions first, in position order; slot draws index into them uniformly.
    by_candidate = np.argsort(~candidates, axis=1, kind="stable")
    picks = rng.integers(0, np.maximum(num_candidates, 1)[:, None], (n, max_predictions))
    drawn = np.take_along_axis(by_candidate, picks, axis=1)
    slot = np.arange(max_predictions)[None, :]
    valid = (slot < num_pred[:, None]) & (num_candidates[:, None] > 0)
    positions = np.where(valid, drawn, 0)
    original = np.take_along_axis(input_ids, positions, axis=1)
    to_mask = valid & (rng.random((n, max_predictions)) < mask_token_fraction)
    masked = input_ids.copy()
    rows = np.broadcast_to(np.arange(n)[:, None], positions.shape)
    masked[rows[to_mask], positions[to_mask]] = mask_id
    return {
        "input_ids": masked,
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": np.where(valid, original, 0).astype(np.int32),
        "masked_lm_weights": valid.astype(np.float32),
    }

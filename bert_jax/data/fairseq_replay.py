"""fairseq's RoBERTa masking replayed draw for draw: `MaskTokensDataset.__getitem__` (fairseq/data/
mask_tokens_dataset.py) for the options fairseq's masked_lm task gives RoBERTa (`mask_whole_words` None,
`mask_multiple_length` 1, `mask_stdev` 0, `freq_weighted_replacement` False).

fairseq masks block `index` of epoch `epoch` from a NumPy generator seeded with
`int(hash((seed, epoch, index)) % 1e6)`, so the masks are a pure function of (seed, epoch, index, block).
Python's hash of an int tuple is not randomized and is the same on any 64-bit CPython >= 3.8 (3.8 changed the
tuple hash, so older Pythons drew other masks from the same seed).
Two generators, as the two fairseq lines have it:
* `"numpy_seed"`: fairseq from the file's first version (July 2019, the RoBERTa release) to v0.12.2, the last
  release: `data_utils.numpy_seed` seeds NumPy's global RandomState; the draws are `np.random.rand`, `.choice`;
* `"default_rng"`: fairseq's main branch since commit d871f61 (Dec 2022): `np.random.default_rng(seed)` (PCG64).

The draws, in fairseq's order, for a block of `sz` tokens (its `<s>` and every `</s>` included; fairseq excludes
no special from masking): u = one uniform, `num_mask = int(mask_prob * sz + u)`; `num_mask` distinct positions
(`choice(sz, num_mask, replace=False)`); then, for the masked input only, `sz` uniforms (< leave + random:
not masked) and `sz` more (< leave / (leave + random): kept, else random); the random tokens last, one
`choice(vocab_size, n, p=weights)` with weights uniform over the vocabulary minus its first `nspecial` symbols.
The target (fairseq's second dataset, the same seed) stops after the positions: `<pad>` but the originals there.
`tests/roberta_fairseq_test.py` compares both against fairseq's own output (tests/golden/README.md). Pure NumPy.
"""

from __future__ import annotations

import numpy as np

from bert_jax.data import masking

GENERATORS = ("numpy_seed", "default_rng")


def fairseq_seed(seed: int, epoch: int, index: int) -> int:
    """The seed fairseq draws block `index`'s masks of `epoch` from (`hash` of the tuple, modulo a float 1e6)."""
    return int(hash((int(seed), int(epoch), int(index))) % 1e6)


class _Draws:
    """fairseq's calls on one of its two generators, under the names both lines use."""

    def __init__(self, kind: str, seed: int):
        if kind not in GENERATORS:
            raise ValueError(f"generator {kind!r} is not one of {GENERATORS}")
        self.legacy = kind == "numpy_seed"
        self.rng = np.random.RandomState(seed) if self.legacy else np.random.default_rng(seed)

    def uniform(self, size=None):
        # RandomState.rand() / rand(n) and Generator.random() / random(n) are each line's "rand".
        if self.legacy:
            return self.rng.rand() if size is None else self.rng.rand(size)
        return self.rng.random(size)

    def choice(self, n, size, **kwargs):
        return self.rng.choice(n, size, **kwargs)


def mask_block(
    block: np.ndarray,
    seed: int,
    epoch: int,
    index: int,
    *,
    vocab_size: int,
    mask_id: int,
    pad_id: int,
    nspecial: int = 4,
    mask_prob: float = 0.15,
    leave_unmasked_prob: float = 0.1,
    random_token_prob: float = 0.1,
    generator: str = "numpy_seed",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fairseq's (source, target) for one unpadded block (`<s>` first), and which positions are predicted:
    source is the masked input, target `pad_id` but the original ids at the predicted positions (as fairseq's
    two datasets give them). `vocab_size` is fairseq's `len(dictionary)`."""
    item = np.asarray(block, np.int64)
    if np.any(item == mask_id):
        raise ValueError(
            f"block {index} already holds mask_id {mask_id} (fairseq asserts it never does)"
        )
    draws = _Draws(generator, fairseq_seed(seed, epoch, index))
    sz = len(item)
    # float(1): fairseq divides by its mask_multiple_length (1); the same float ops keep the same rounding.
    num_mask = int(mask_prob * sz / float(1) + draws.uniform())
    mask = np.zeros(sz, bool)
    mask[draws.choice(sz, num_mask, replace=False)] = True
    target = np.full(sz, pad_id, np.int64)
    target[mask] = item[mask]

    other = random_token_prob + leave_unmasked_prob
    unmask = random = np.zeros(sz, bool)
    if other > 0.0:
        not_masked = mask & (draws.uniform(sz) < other)
        if random_token_prob == 0.0:
            unmask = not_masked
        elif leave_unmasked_prob == 0.0:
            random = not_masked
        else:
            kept = draws.uniform(sz) < leave_unmasked_prob / other
            unmask, random = not_masked & kept, not_masked & ~kept
    predicted, mask = mask, mask ^ unmask  # kept positions are predicted, not masked
    source = item.copy()
    source[mask] = mask_id
    num_random = int(random.sum())
    if num_random > 0:
        weights = np.ones(vocab_size)
        weights[:nspecial] = 0
        source[random] = draws.choice(vocab_size, num_random, p=weights / weights.sum())
    return source, target, predicted


def mask_rows(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    seed: int,
    epoch,
    indices,
    *,
    max_predictions: int,
    **options,
) -> dict[str, np.ndarray]:
    """`mask_block` over padded rows (row r is fairseq's block `indices[r]` of `epoch`, one int or one per row):
    the masked-LM features `input_ids`, `masked_lm_positions` (increasing, then 0), `masked_lm_ids`,
    `masked_lm_weights`. `options` are `mask_block`'s keywords (`vocab_size`, `mask_id`, `pad_id`, ...).
    `max_predictions` must hold the most fairseq can draw in a row this wide (fairseq has no cap): one line else.
    """
    n, length = input_ids.shape
    needed = masking.fairseq_max_predictions(length, options.get("mask_prob", 0.15))
    if max_predictions < needed:
        raise ValueError(
            f"max_predictions {max_predictions} < {needed}, the most fairseq's masking draws in {length} tokens"
        )
    epochs = np.broadcast_to(np.asarray(epoch), (n,))
    masked = np.array(input_ids, copy=True)
    positions = np.zeros((n, max_predictions), np.int32)
    ids = np.zeros((n, max_predictions), np.int32)
    weights = np.zeros((n, max_predictions), np.float32)
    for r, index in enumerate(indices):
        size = int(attention_mask[r].sum())
        block = input_ids[r, :size]
        source, target, predicted = mask_block(block, seed, epochs[r], index, **options)
        picked = np.flatnonzero(predicted)
        masked[r, :size] = source
        positions[r, : len(picked)] = picked
        ids[r, : len(picked)] = target[picked]
        weights[r, : len(picked)] = 1.0
    return {
        "input_ids": masked,
        "masked_lm_positions": positions,
        "masked_lm_ids": ids,
        "masked_lm_weights": weights,
    }

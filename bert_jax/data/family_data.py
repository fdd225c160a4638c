"""Each model family's pretraining data path, in one place (FAMILY_DATA, keyed by the recipe's `family`): which
stream a text/TFDS corpus is read as, how its rows are masked per step, and which data options apply.

BERT (and a family not named here, ALBERT among them): NSP pairs (`streams.CorpusStream`) masked as
create_pretraining_data (`masking.mask_tokens`); ALBERT's recipe turns on its sentence-order pairs
(`data.sentence_order`) and n-gram masking (`data.max_ngram`), options of the same path. RoBERTa: FULL-SENTENCES rows (`full_sentences.FullSentenceStream`, fairseq's blocks) masked as
fairseq draws them (`fairseq_replay`, per block), no instance files (they hold BERT's pairs), no packing (rows are already full).
ELECTRA: build_pretraining_dataset.py's examples (`electra_examples.ElectraExampleStream`: one or two segments of
one document, no NSP) masked as electra's pretrain_helpers.mask (`masking.mask_tokens_electra`: single tokens drawn
with replacement, the recipe's 85% [MASK] / 15% kept, no random tokens); no instance files (they hold
BERT's NSP pairs), no packing (the `rtd` model reads one sequence per row, as electra's examples are written), and
no NSP-pair fields (`data.short_seq_prob`: electra has its own fixed 5% random-length rule).
The loader (`loader.py`) calls `check_family` and `data_path`. Pure NumPy.
"""

from __future__ import annotations

import numpy as np

from bert_jax.data import fairseq_replay, masking
from bert_jax.data.electra_examples import ElectraExampleStream
from bert_jax.data.full_sentences import FullSentenceStream
from bert_jax.data.streams import CorpusStream


def bert_masks(feats, rng, max_pred, tok, cfg) -> dict[str, np.ndarray]:
    """BERT's dynamic masks (`masking.mask_tokens`, create_pretraining_data's rules); ALBERT's n-grams of whole
    words when the recipe sets `data.max_ngram` (the loader puts it and ALBERT's word starts in `cfg`); other
    [MASK]/random shares when the recipe sets `data.mask_token_fraction` / `data.random_token_fraction`."""
    return masking.mask_tokens(
        feats["input_ids"],
        feats["attention_mask"],
        rng,
        max_predictions=max_pred,
        masked_lm_prob=cfg["masked_lm_prob"],
        special_ids=tok.special_ids,
        mask_id=tok.mask_id,
        vocab_size=tok.vocab_size,
        is_continuation=cfg.get("continuation", tok.is_continuation) if cfg["whole_word"] else None,
        max_ngram=cfg.get("max_ngram", 1),
        mask_token_fraction=cfg.get("mask_token_fraction", 0.8),
        random_token_fraction=cfg.get("random_token_fraction", 0.1),
    )


def fairseq_masks(feats, rng, max_pred, tok, cfg) -> dict[str, np.ndarray]:
    """RoBERTa's dynamic masks: fairseq's MaskTokensDataset draw for draw (`fairseq_replay`, v0.12.2's generator),
    each row from the seed fairseq gives its block: the data seed, the epoch counted from 1 as fairseq counts it,
    the block's number (`_epoch`, `_block` from the stream). `rng` is not used: the masks are a function of the
    block, not of the step. Random tokens avoid the vocabulary's first four ids, fairseq's specials."""
    specials = (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id)
    if sorted(specials) != [0, 1, 2, 3]:
        raise ValueError(
            f"fairseq's masking needs <s>, <pad>, </s>, <unk> at ids 0-3 (its first four symbols); this "
            f"vocabulary has them at {specials}"
        )
    return fairseq_replay.mask_rows(
        feats["input_ids"],
        feats["attention_mask"],
        cfg["seed"],
        feats["_epoch"] + 1,
        feats["_block"],
        max_predictions=max_pred,
        mask_prob=cfg["masked_lm_prob"],
        vocab_size=tok.vocab_size,
        mask_id=tok.mask_id,
        pad_id=tok.pad_id,
    )


def electra_masks(feats, rng, max_pred, tok, cfg) -> dict[str, np.ndarray]:
    """ELECTRA's dynamic masks (`masking.mask_tokens_electra`, pretrain_helpers.mask's rules) at the recipe's
    [MASK] share (`data.mask_token_fraction`; electra's 0.85 when absent)."""
    return masking.mask_tokens_electra(
        feats["input_ids"],
        feats["attention_mask"],
        rng,
        max_predictions=max_pred,
        mask_prob=cfg["masked_lm_prob"],
        cls_id=tok.cls_id,
        sep_id=tok.sep_id,
        mask_id=tok.mask_id,
        mask_token_fraction=cfg.get("mask_token_fraction", 0.85),
    )


def pair_stream(cfg, corpus, tok, length, seed, key):
    """BERT's rows: NSP pairs made per epoch (`instances.create_instance_specs`); ALBERT's sentence-order pairs
    with `data.sentence_order`."""
    return CorpusStream(
        corpus, length, cfg.short_seq_prob, seed, key, tok.cls_id, tok.sep_id,
        sentence_order=cfg.get("sentence_order", False),
    )  # fmt: skip


def full_sentence_stream(cfg, corpus, tok, length, seed, key):
    """RoBERTa's rows: FULL-SENTENCES as fairseq's blocks (every sentence ends with `</s>`), shuffled per epoch."""
    ids = {"cls_id": tok.cls_id, "sep_id": tok.sep_id, "pad_id": tok.pad_id}
    return FullSentenceStream(corpus, length, seed, key, **ids, sentence_eos=True)


def electra_stream(cfg, corpus, tok, length, seed, key):
    """ELECTRA's rows: build_pretraining_dataset's examples, built once, shuffled per epoch."""
    ids = {"cls_id": tok.cls_id, "sep_id": tok.sep_id, "pad_id": tok.pad_id}
    return ElectraExampleStream(corpus, length, seed, key, **ids)


# Each model family's data path (the recipe's `family`): (the stream of a text/TFDS corpus, the per-step masks,
# whether instance files and packing apply, and if not why: `unpacked`; the data fields the family refuses, each with
# why). A family not named here reads BERT's.
FAMILY_DATA = {
    "bert": {"stream": pair_stream, "mask": bert_masks, "instances": True, "packing": True},
    "roberta": {
        "stream": full_sentence_stream,
        "mask": fairseq_masks,
        "instances": False,
        "packing": False,
        "unpacked": "FULL-SENTENCES rows are already full of contiguous sentences (nothing to pack)",
    },
    "electra": {
        "stream": electra_stream,
        "mask": electra_masks,
        "instances": False,
        "packing": False,
        "unpacked": "rtd model reads one example per row, as build_pretraining_dataset.py writes them",
        "refused": {
            "short_seq_prob": "examples take build_pretraining_dataset.py's own fixed 5% random-length rule",
            "sentence_order": "examples have no sentence-pair task",
        },
    },
}


def data_path(family: str) -> dict:
    """The data path of `family` (BERT's for a family FAMILY_DATA does not name)."""
    return FAMILY_DATA.get(family, FAMILY_DATA["bert"])


def check_family(cfg, family: str) -> None:
    """One line naming the data field a family's data path cannot honour."""
    path = data_path(family)
    if cfg.source == "instances" and not path["instances"]:
        raise ValueError(
            f"data.source='instances': the {family} family reads text or TFDS (its rows are made from "
            "documents; instance files hold BERT's NSP pairs)"
        )
    if cfg.packing and not path["packing"]:
        raise ValueError(
            f"data.packing=True: the {family} family's {path['unpacked']}; set data.packing=False"
        )
    for field, why in path.get("refused", {}).items():
        if field in cfg:
            raise ValueError(f"data.{field}: the {family} family's {why}; remove the field")
    if path["mask"] is fairseq_masks and cfg.whole_word_mask:
        raise ValueError(
            "data.whole_word_mask=True: RoBERTa's fairseq masking masks single tokens, as the paper"
        )
    if path["mask"] is electra_masks:
        # pretrain_helpers.mask draws single tokens and never a random one (the generator makes replacements).
        if cfg.whole_word_mask or cfg.get("max_ngram", 1) > 1:
            field, fix = (
                ("whole_word_mask=True", "set it to False")
                if cfg.whole_word_mask
                else (f"max_ngram={cfg.max_ngram}", "remove the field")
            )
            raise ValueError(
                f"data.{field}: ELECTRA's pretrain_helpers.mask masks single tokens; {fix}"
            )
        if cfg.get("random_token_fraction", 0.0) != 0.0:
            raise ValueError(
                f"data.random_token_fraction={cfg.random_token_fraction}: ELECTRA's pretrain_helpers.mask "
                "makes no random tokens (its generator makes the replacements); set it to 0.0"
            )
    if path["mask"] is fairseq_masks:
        # fairseq has no cap: every draw must fit the batch's prediction slots (checked before the first step).
        shapes = [("seq_length", "max_predictions_per_seq")]
        if cfg.phase2_fraction > 0:
            shapes.append(("phase2_seq_length", "phase2_max_predictions_per_seq"))
        for length, cap in shapes:
            most = masking.fairseq_max_predictions(cfg[length], cfg.masked_lm_prob)
            if cfg[cap] < most:
                raise ValueError(
                    f"data.{cap}={cfg[cap]}: fairseq's masking predicts up to {most} positions in "
                    f"data.{length}={cfg[length]} tokens; set it to {most}"
                )

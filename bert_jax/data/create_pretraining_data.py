"""Offline instance creation, with the original create_pretraining_data.py's flags.

    python -m bert_jax.data.create_pretraining_data --input_file='wiki/*.txt' \
        --vocab_file=vocab.txt --output_dir=instances --max_seq_length=128 \
        --max_predictions_per_seq=20 --masked_lm_prob=0.15 --dupe_factor=10

With `--original_rng` (and the original's required `--input_file`, `--output_file`,
`--vocab_file`) the output is exactly the original tool's for the same corpus, vocab, flags and
seed (`bert_jax.data.original_rng`), written as TFRecords of tf.train.Example in its layout
(or ArrayRecord for files named `*.array_record`). Adding `--spm_model_file` replays
google-research/albert's tool instead (`bert_jax.data.original_albert`: SentencePiece pieces,
sentence-order pairs, n-gram masking, `token_boundary`; its flags `--ngram`,
`--favor_shorter_ngram`, `--random_next_sentence`, `--do_permutation`, and its defaults for
flags left unset: `--do_whole_word_mask=True --dupe_factor=40 --max_seq_length=512`). Its n-gram
lengths come from NumPy's global RandomState, which the original never seeds: the output equals a
run of the original preceded by `np.random.seed(N)`, N = `--numpy_seed` (default `--random_seed`).

Unlike the original, the corpus is processed in blocks of `--documents_per_shard` documents:
each block is tokenized, turned into `dupe_factor` passes of instances (random next sentences
drawn from the same block), shuffled, masked once (static masking, as the original) and written
to its own ArrayRecord shard, so memory is bounded by one block, never the corpus.
With `--output_file` (comma-separated) instances go round-robin into those files instead
(TFRecords in the original's layout for names containing ".tfrecord", else ArrayRecord).
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
from absl import app, flags, logging

from bert_jax.data import corpus as corpus_lib
from bert_jax.data import instances, masking, original_albert, original_rng, records
from bert_jax.data.tokenizer import load_tokenizer

FLAGS = flags.FLAGS


def create_shards(
    input_pattern: str,
    tokenizer,
    output_paths_for_block,
    *,
    max_seq_length: int,
    max_predictions: int,
    masked_lm_prob: float,
    short_seq_prob: float,
    dupe_factor: int,
    seed: int,
    whole_word: bool,
    documents_per_shard: int,
) -> dict:
    """Writes instances block by block; `output_paths_for_block(i)` gives a writer for block i.

    Returns counters: blocks, instances, plus the corpus statistics.
    """
    stats = corpus_lib.CorpusStats()
    docs = corpus_lib.iter_text_documents(input_pattern, stats)
    total, blocks, writer = 0, 0, None
    while block := list(itertools.islice(docs, documents_per_shard)):
        corpus = instances.TokenizedCorpus.from_documents(block, tokenizer, stats)
        if corpus.num_documents < 2:
            logging.warning("block %d: fewer than 2 usable documents, skipped", blocks)
            stats.empty_documents += corpus.num_documents  # counted as unusable, not lost silently
            continue
        stats.long_sentences += int((np.diff(corpus.sentence_starts) > max_seq_length - 3).sum())
        rng = np.random.default_rng([seed, blocks])
        specs = np.concatenate(
            [
                instances.create_instance_specs(corpus, max_seq_length, short_seq_prob, rng)
                for _ in range(dupe_factor)
            ]
        )
        specs = specs[rng.permutation(len(specs))]
        writer = output_paths_for_block(blocks, writer)
        for lo in range(0, len(specs), 1024):
            chunk = specs[lo : lo + 1024]
            feats = instances.assemble(
                corpus.tokens, chunk, max_seq_length, tokenizer.cls_id, tokenizer.sep_id
            )
            feats["next_sentence_labels"] = chunk[:, 4].astype(np.int32)
            feats.update(
                masking.mask_tokens(
                    feats["input_ids"],
                    feats["attention_mask"],
                    rng,
                    max_predictions=max_predictions,
                    masked_lm_prob=masked_lm_prob,
                    special_ids=tokenizer.special_ids,
                    mask_id=tokenizer.mask_id,
                    vocab_size=tokenizer.vocab_size,
                    is_continuation=tokenizer.is_continuation if whole_word else None,
                )
            )
            writer.write_batch(feats, max_predictions)
        total += len(specs)
        blocks += 1
        logging.info(
            "block %d: %d documents -> %d instances", blocks, corpus.num_documents, len(specs)
        )
    if writer is not None:
        writer.close()
    if blocks == 0:
        raise ValueError(f"{input_pattern}: fewer than 2 usable documents, nothing written")
    stats.log("create_pretraining_data")
    return {"blocks": blocks, "instances": total, **stats.__dict__}


def create_original(flag_values) -> dict:
    """The `--original_rng` run: the original's instances, written as the original writes them."""
    tok = load_tokenizer(flag_values.vocab_file, flag_values.do_lower_case)
    found = original_rng.create_instances(
        flag_values.input_file,
        tok,
        flag_values.vocab_file,
        max_seq_length=flag_values.max_seq_length,
        max_predictions=flag_values.max_predictions_per_seq,
        masked_lm_prob=flag_values.masked_lm_prob,
        short_seq_prob=flag_values.short_seq_prob,
        dupe_factor=flag_values.dupe_factor,
        seed=flag_values.random_seed,
        whole_word=flag_values.do_whole_word_mask,
    )
    writer = records.InstanceWriter(flag_values.output_file.split(","), tfrecord_default=True)
    for lo in range(0, len(found), 1024):
        feats = original_rng.to_features(
            found[lo : lo + 1024], flag_values.max_seq_length, flag_values.max_predictions_per_seq
        )
        writer.write_batch(feats, flag_values.max_predictions_per_seq)
    writer.close()
    return {"instances": len(found), "files": len(flag_values.output_file.split(","))}


# ALBERT's tool: its defaults where they differ from BERT's, and its flags BERT's tool lacks.
ALBERT_DEFAULTS = {"do_whole_word_mask": True, "dupe_factor": 40, "max_seq_length": 512}
ALBERT_ONLY = ("ngram", "favor_shorter_ngram", "random_next_sentence", "do_permutation")


def _albert(flag_values, name):
    """A flag's value for ALBERT's tool: its own default when the flag is not given."""
    if name in ALBERT_DEFAULTS and not flag_values[name].present:
        return ALBERT_DEFAULTS[name]
    return flag_values[name].value


def create_albert(flag_values) -> dict:
    """The `--original_rng --spm_model_file` run: google-research/albert's instances, in its layout."""
    paths = flag_values.output_file.split(",")
    for path in paths:
        if path.endswith(".array_record"):
            raise ValueError(
                f"--output_file={path}: ALBERT's instances are written as TFRecords "
                "(ArrayRecord has no token_boundary)"
            )
    max_seq_length = _albert(flag_values, "max_seq_length")
    if max_seq_length < 5:
        raise ValueError(
            f"--max_seq_length={max_seq_length}: the original needs at least 5 "
            "([CLS] A [SEP] B [SEP] with one token each)"
        )
    pieces = original_albert.SentencePieces(flag_values.spm_model_file)
    found = original_albert.create_instances(
        flag_values.input_file,
        pieces,
        do_lower_case=flag_values.do_lower_case,
        max_seq_length=max_seq_length,
        short_seq_prob=flag_values.short_seq_prob,
        dupe_factor=_albert(flag_values, "dupe_factor"),
        seed=flag_values.random_seed,
        numpy_seed=(
            flag_values.random_seed if flag_values.numpy_seed is None else flag_values.numpy_seed
        ),
        random_next_sentence=flag_values.random_next_sentence,
        masking=original_albert.MaskingOptions(
            masked_lm_prob=flag_values.masked_lm_prob,
            max_predictions=flag_values.max_predictions_per_seq,
            whole_word=_albert(flag_values, "do_whole_word_mask"),
            ngram=flag_values.ngram,
            favor_shorter_ngram=flag_values.favor_shorter_ngram,
            permutation=flag_values.do_permutation,
        ),
    )
    # do_permutation doubles the prediction slots (the permuted positions follow the masked ones).
    slots = flag_values.max_predictions_per_seq * (1 + int(flag_values.do_permutation))
    original_albert.write_tfrecords(found, pieces, paths, max_seq_length, slots)
    return {"instances": len(found), "files": len(paths)}


def check_original_flags(flag_values) -> None:
    """Raises ValueError (one line naming the flag) for flags the original tool would reject."""
    if flag_values.spm_model_file:  # ALBERT's tool: --vocab_file is not read
        for name in ("input_file", "output_file"):
            if not getattr(flag_values, name):
                raise ValueError(f"--{name} is required with --original_rng (as in the original)")
        for name in ("output_dir", "documents_per_shard"):
            if flag_values[name].present:
                raise ValueError(f"--{name} is not a flag of the original tool (--original_rng)")
        return
    for name in ALBERT_ONLY + ("numpy_seed",):
        if flag_values[name].present:
            raise ValueError(f"--{name} is a flag of ALBERT's tool: give --spm_model_file too")
    for name in ("input_file", "output_file", "vocab_file"):
        if not getattr(flag_values, name):
            raise ValueError(f"--{name} is required with --original_rng (as in the original)")
    for name in ("output_dir", "documents_per_shard"):
        if flag_values[name].present:
            raise ValueError(f"--{name} is not a flag of the original tool (--original_rng)")
    if flag_values.vocab_file.endswith(".model"):
        raise ValueError(
            f"--vocab_file={flag_values.vocab_file}: the original reads vocab.txt only "
            "(ALBERT's tool: --spm_model_file)"
        )
    if flag_values.max_seq_length < 5:
        raise ValueError(
            f"--max_seq_length={flag_values.max_seq_length}: the original needs at least 5 "
            "([CLS] A [SEP] B [SEP] with one token each)"
        )


def define_flags(flag_values=FLAGS):
    """Registers the command-line flags (only when run as a program, so importing is free)."""
    flags.DEFINE_string(
        "input_file", None, "Comma-separated input text files/globs.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "output_file",
        None,
        "Comma-separated output files (*.tfrecord*: TFRecord, else ArrayRecord).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "Directory for one shard per block (not output_file).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "vocab_file",
        "",
        "vocab.txt or SentencePiece model; '' = bundled sample.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "do_lower_case", True, "Lower-case the input (for a vocab.txt).", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "do_whole_word_mask",
        False,
        "Mask whole words instead of single pieces.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("max_seq_length", 128, "Maximum sequence length.", flag_values=flag_values)
    flags.DEFINE_integer(
        "max_predictions_per_seq",
        20,
        "Maximum masked-LM predictions per sequence.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "random_seed", 12345, "Seed for instances and masking.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "dupe_factor",
        10,
        "Passes over the input, each with different masks.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "masked_lm_prob", 0.15, "Fraction of tokens to predict.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "short_seq_prob", 0.1, "Probability of a shorter target length.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "documents_per_shard",
        100_000,
        "Documents per block (bounds memory).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "spm_model_file",
        None,
        "With --original_rng: replay google-research/albert's tool with this SentencePiece model.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "ngram", 3, "ALBERT: longest n-gram (in words) to mask.", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "favor_shorter_ngram",
        True,
        "ALBERT: p(n) proportional to 1/n (else to 1/(ngram + 1 - n)).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "random_next_sentence",
        False,
        "ALBERT: BERT's random next sentence instead of sentence order.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "do_permutation",
        False,
        "ALBERT: also permute unmasked n-grams.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "numpy_seed",
        None,
        "ALBERT: seed of the n-gram draws (the original's unseeded np.random; default "
        "--random_seed).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "original_rng",
        False,
        "Replay the original tool's random.Random draws: identical output to "
        "google-research/bert's create_pretraining_data.py (whole corpus in memory).",
        flag_values=flag_values,
    )


def run(flag_values) -> dict:
    """One run of the tool with parsed flags; returns its counters."""
    if flag_values.original_rng:
        check_original_flags(flag_values)
        if flag_values.spm_model_file:
            return create_albert(flag_values)
        return create_original(flag_values)
    for name in ("spm_model_file", "numpy_seed", *ALBERT_ONLY):
        if flag_values[name].present:
            raise ValueError(f"--{name} replays ALBERT's tool: it needs --original_rng")
    if not flag_values.input_file:
        raise ValueError("--input_file is required")
    if bool(flag_values.output_file) == bool(flag_values.output_dir):
        raise ValueError("give exactly one of --output_file and --output_dir")
    tok = load_tokenizer(
        flag_values.vocab_file or str(corpus_lib.SAMPLE_VOCAB), flag_values.do_lower_case
    )

    def writer_for(block, current):
        if flag_values.output_file:  # one writer for all blocks, round-robin over the files
            return current or records.InstanceWriter(flag_values.output_file.split(","))
        if current is not None:
            current.close()
        path = f"{flag_values.output_dir}/instances-{block:05d}.array_record"
        return records.InstanceWriter([path])

    return create_shards(
        flag_values.input_file,
        tok,
        writer_for,
        max_seq_length=flag_values.max_seq_length,
        max_predictions=flag_values.max_predictions_per_seq,
        masked_lm_prob=flag_values.masked_lm_prob,
        short_seq_prob=flag_values.short_seq_prob,
        dupe_factor=flag_values.dupe_factor,
        seed=flag_values.random_seed,
        whole_word=flag_values.do_whole_word_mask,
        documents_per_shard=flag_values.documents_per_shard,
    )


def main(argv):
    del argv
    try:
        counts = run(FLAGS)
    except (ValueError, OSError) as error:  # bad input: one line, no traceback
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
    print(counts)


if __name__ == "__main__":
    define_flags()
    app.run(main)

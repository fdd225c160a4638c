"""Offline instance creation, with the original create_pretraining_data.py's flags.

    python -m bert_jax.data.create_pretraining_data --input_file='wiki/*.txt' \
        --vocab_file=vocab.txt --output_dir=instances --max_seq_length=128 \
        --max_predictions_per_seq=20 --masked_lm_prob=0.15 --dupe_factor=10

Unlike the original, the corpus is processed in blocks of `--documents_per_shard` documents:
each block is tokenized, turned into `dupe_factor` passes of instances (random next sentences
drawn from the same block), shuffled, masked once (static masking, as the original) and written
to its own ArrayRecord shard, so memory is bounded by one block, never the corpus.
With `--output_file` (comma-separated) instances go round-robin into those files instead.
"""

from __future__ import annotations

import itertools

import numpy as np
from absl import app, flags, logging

from bert_jax.data import corpus as corpus_lib
from bert_jax.data import instances, masking, records
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


def define_flags():
    """Registers the command-line flags (only when run as a program, so importing is free)."""
    flags.DEFINE_string("input_file", None, "Comma-separated input text files/globs.")
    flags.DEFINE_string("output_file", None, "Comma-separated output ArrayRecord files.")
    flags.DEFINE_string("output_dir", None, "Directory for one shard per block (not output_file).")
    flags.DEFINE_string("vocab_file", "", "vocab.txt or SentencePiece model; '' = bundled sample.")
    flags.DEFINE_bool("do_lower_case", True, "Lower-case the input (for a vocab.txt).")
    flags.DEFINE_bool("do_whole_word_mask", False, "Mask whole words instead of single pieces.")
    flags.DEFINE_integer("max_seq_length", 128, "Maximum sequence length.")
    flags.DEFINE_integer(
        "max_predictions_per_seq", 20, "Maximum masked-LM predictions per sequence."
    )
    flags.DEFINE_integer("random_seed", 12345, "Seed for instances and masking.")
    flags.DEFINE_integer("dupe_factor", 10, "Passes over the input, each with different masks.")
    flags.DEFINE_float("masked_lm_prob", 0.15, "Fraction of tokens to predict.")
    flags.DEFINE_float("short_seq_prob", 0.1, "Probability of a shorter target length.")
    flags.DEFINE_integer("documents_per_shard", 100_000, "Documents per block (bounds memory).")


def main(argv):
    del argv
    if bool(FLAGS.output_file) == bool(FLAGS.output_dir):
        raise app.UsageError("give exactly one of --output_file and --output_dir")
    tok = load_tokenizer(FLAGS.vocab_file or str(corpus_lib.SAMPLE_VOCAB), FLAGS.do_lower_case)

    def writer_for(block, current):
        if FLAGS.output_file:  # one writer for all blocks, round-robin over the files
            return current or records.InstanceWriter(FLAGS.output_file.split(","))
        if current is not None:
            current.close()
        return records.InstanceWriter([f"{FLAGS.output_dir}/instances-{block:05d}.array_record"])

    counts = create_shards(
        FLAGS.input_file,
        tok,
        writer_for,
        max_seq_length=FLAGS.max_seq_length,
        max_predictions=FLAGS.max_predictions_per_seq,
        masked_lm_prob=FLAGS.masked_lm_prob,
        short_seq_prob=FLAGS.short_seq_prob,
        dupe_factor=FLAGS.dupe_factor,
        seed=FLAGS.random_seed,
        whole_word=FLAGS.do_whole_word_mask,
        documents_per_shard=FLAGS.documents_per_shard,
    )
    print(counts)


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["input_file"])
    app.run(main)

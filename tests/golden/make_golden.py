"""Regenerates the golden TFRecords with google-research/bert's and google-research/albert's own
create_pretraining_data.py.

Not part of the test suite (it needs TensorFlow and the original source, neither of which the
repository ships). See README.md in this directory for the exact commands.

    /work/tfvenv/bin/python tests/golden/make_golden.py --original_dir=/work/orig_bert \
        --albert_dir=/work/orig_albert

`--original_dir` holds create_pretraining_data.py and tokenization.py from google-research/bert
at commit eedf5716ce1268e56f0a50264a88cafad334ac61, unmodified. The original is TF1 code; this
script runs it under TF2 by aliasing `tensorflow` to `tensorflow.compat.v1` (which provides
`flags`, `gfile`, `logging`, `python_io`, `app` and `train.Example`) before importing it.

`--albert_dir` holds a package `albert/` (an empty `__init__.py`, create_pretraining_data.py and
tokenization.py from google-research/albert at commit b772393d3dae115b493258ce8e37c17b2cc62100,
unmodified); it imports `tensorflow.compat.v1` itself. Two things are added around it, not in it:
an empty `tensorflow_hub` module (tokenization.py imports it, only `from_hub_module` uses it) and
`np.random.seed(numpy_seed)` just before its `main`, because its n-gram draws use NumPy's global
RandomState, which it never seeds (bert_jax's `--numpy_seed`).
"""

import argparse
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
VOCAB = HERE.parent.parent / "bert_jax" / "assets" / "sample_vocab.txt"
SPM = HERE.parent.parent / "bert_jax" / "assets" / "albert_sample_spm.model"
CORPUS = f"{HERE / 'corpus_a.txt'},{HERE / 'corpus_b.txt'}"
ALBERT_CORPUS = f"{CORPUS},{HERE / 'albert_extra.txt'}"

# name -> the original's flags (input_file and vocab_file are added below).
RUNS = {
    "pieces": {
        "output_file": "pieces.tfrecord",
        "max_seq_length": 64,
        "max_predictions_per_seq": 10,
        "dupe_factor": 3,
        "short_seq_prob": 0.3,
        "random_seed": 7,
    },
    "whole_word": {
        "output_file": "whole_word-0.tfrecord,whole_word-1.tfrecord",
        "do_whole_word_mask": True,
        "max_seq_length": 48,
        "max_predictions_per_seq": 8,
        "masked_lm_prob": 0.2,
        "dupe_factor": 2,
        "random_seed": 12345,
    },
    "cased": {
        "output_file": "cased.tfrecord",
        "do_lower_case": False,
        "max_seq_length": 32,
        "max_predictions_per_seq": 5,
        "masked_lm_prob": 0.3,
        "short_seq_prob": 0.0,
        "dupe_factor": 1,
        "random_seed": 3,
    },
}

# name -> ALBERT's flags (input_file, vocab_file and spm_model_file are added below); numpy_seed
# is not one of them: the shim seeds NumPy's global RandomState with it.
ALBERT_RUNS = {
    # Its defaults: whole words, n-grams up to 3 favouring short ones, sentence order.
    "albert_ngram": {
        "output_file": "albert_ngram.tfrecord",
        "max_seq_length": 64,
        "max_predictions_per_seq": 10,
        "dupe_factor": 3,
        "short_seq_prob": 0.3,
        "random_seed": 7,
        "numpy_seed": 7,
    },
    # Short rows (much truncation), single pieces, longer n-grams favoured, two files.
    "albert_short": {
        "output_file": "albert_short-0.tfrecord,albert_short-1.tfrecord",
        "do_whole_word_mask": False,
        "favor_shorter_ngram": False,
        "max_seq_length": 24,
        "max_predictions_per_seq": 6,
        "masked_lm_prob": 0.25,
        "dupe_factor": 2,
        "random_seed": 12345,
        "numpy_seed": 99,
    },
    # BERT's random next sentence, permuted n-grams (twice the prediction slots), cased, bigrams.
    "albert_permute": {
        "output_file": "albert_permute.tfrecord",
        "do_permutation": True,
        "random_next_sentence": True,
        "do_lower_case": False,
        "ngram": 2,
        "max_seq_length": 40,
        "max_predictions_per_seq": 5,
        "dupe_factor": 1,
        "random_seed": 3,
        "numpy_seed": 5,
    },
}

# Run in a child process: aliases tensorflow to its v1 API, then calls the original's main.
SHIM = """
import sys
import tensorflow as tf
sys.modules["tensorflow"] = tf.compat.v1
sys.path.insert(0, sys.argv.pop(1))
import create_pretraining_data as cpd
tf.compat.v1.app.run(cpd.main, argv=sys.argv)
"""

# ALBERT's: argv[1] the directory holding the `albert` package, argv[2] the NumPy seed.
ALBERT_SHIM = """
import sys
import types
import numpy as np
import tensorflow as tf
sys.modules["tensorflow_hub"] = types.ModuleType("tensorflow_hub")
sys.path.insert(0, sys.argv.pop(1))
numpy_seed = int(sys.argv.pop(1))
from albert import create_pretraining_data as cpd
np.random.seed(numpy_seed)
tf.compat.v1.app.run(cpd.main, argv=sys.argv)
"""


def flag_list(flags: dict, albert: bool = False) -> list[str]:
    """The command-line form of a run's flags, outputs made absolute in this directory."""
    out = [f"--input_file={CORPUS}", f"--vocab_file={VOCAB}"]
    if albert:  # the original requires --vocab_file, and reads only the SentencePiece model
        out = [f"--input_file={ALBERT_CORPUS}", f"--vocab_file={SPM}", f"--spm_model_file={SPM}"]
    for key, value in flags.items():
        if key == "output_file":
            value = ",".join(str(HERE / v) for v in value.split(","))
        out.append(f"--{key}={value}")
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--original_dir", help="google-research/bert's files (BERT's runs)")
    parser.add_argument("--albert_dir", help="holds google-research/albert's files as albert/")
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    args = parser.parse_args()
    jobs = []
    if args.original_dir:
        jobs += [(name, [SHIM, args.original_dir], flag_list(f)) for name, f in RUNS.items()]
    if args.albert_dir:
        for name, f in ALBERT_RUNS.items():
            f = dict(f)
            head = [ALBERT_SHIM, args.albert_dir, str(f.pop("numpy_seed"))]
            jobs.append((name, head, flag_list(f, albert=True)))
    for name, head, argv in jobs:
        if args.only and name not in args.only.split(","):
            continue
        cmd = [sys.executable, "-c", *head, *argv]
        print(name, " ".join(cmd[3:]))
        subprocess.run(cmd, check=True, capture_output=True)


if __name__ == "__main__":
    main()

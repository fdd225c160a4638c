"""Regenerates the golden TFRecords with google-research/bert's own create_pretraining_data.py.

Not part of the test suite (it needs TensorFlow and the original source, neither of which the
repository ships). See README.md in this directory for the exact commands.

    /work/tfvenv/bin/python tests/golden/make_golden.py --original_dir=/work/orig_bert

`--original_dir` holds create_pretraining_data.py and tokenization.py from google-research/bert
at commit eedf5716ce1268e56f0a50264a88cafad334ac61, unmodified. The original is TF1 code; this
script runs it under TF2 by aliasing `tensorflow` to `tensorflow.compat.v1` (which provides
`flags`, `gfile`, `logging`, `python_io`, `app` and `train.Example`) before importing it.
"""

import argparse
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
VOCAB = HERE.parent.parent / "bert_jax" / "assets" / "sample_vocab.txt"
CORPUS = f"{HERE / 'corpus_a.txt'},{HERE / 'corpus_b.txt'}"

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

# Run in a child process: aliases tensorflow to its v1 API, then calls the original's main.
SHIM = """
import sys
import tensorflow as tf
sys.modules["tensorflow"] = tf.compat.v1
sys.path.insert(0, sys.argv.pop(1))
import create_pretraining_data as cpd
tf.compat.v1.app.run(cpd.main, argv=sys.argv)
"""


def flag_list(flags: dict) -> list[str]:
    """The command-line form of a run's flags, outputs made absolute in this directory."""
    out = [f"--input_file={CORPUS}", f"--vocab_file={VOCAB}"]
    for key, value in flags.items():
        if key == "output_file":
            value = ",".join(str(HERE / v) for v in value.split(","))
        out.append(f"--{key}={value}")
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--original_dir", required=True)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    args = parser.parse_args()
    for name, flags in RUNS.items():
        if args.only and name not in args.only.split(","):
            continue
        cmd = [sys.executable, "-c", SHIM, args.original_dir, *flag_list(flags)]
        print(name, " ".join(cmd[3:]))
        subprocess.run(cmd, check=True, capture_output=True)


if __name__ == "__main__":
    main()

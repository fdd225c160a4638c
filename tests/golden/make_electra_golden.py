"""Regenerates the ELECTRA golden TFRecords with google-research/electra's own build_pretraining_dataset.py.

Not part of the test suite (it needs TensorFlow and the original source, neither of which the repository ships).
See README.md in this directory for the exact commands.

    /work/tfvenv/bin/python tests/golden/make_electra_golden.py --original_dir=/work/orig_electra

`--original_dir` holds build_pretraining_dataset.py, model/__init__.py, model/tokenization.py, util/__init__.py
and util/utils.py from google-research/electra at commit 8a46635f32083ada044d7e9ad09604742600ee7b, unmodified
(the original already imports `tensorflow.compat.v1`, so no shim is needed). The original draws from Python's
global `random` without seeding it; this script calls `random.seed(seed)` just before the original's `main()`,
which is what `electra_examples.original_examples(..., seed)` replays. With one process the original writes its
examples round-robin into 1000 files; they are read back in that order and written, byte for byte, into one file.
"""

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ASSETS = HERE.parent.parent / "bert_jax" / "assets"
VOCAB = ASSETS / "sample_vocab.txt"
NUM_OUT_FILES = 1000  # ExampleWriter's default; main() does not change it

# name -> (corpus files copied into the --corpus-dir, the original's flags, the seed of `random`).
RUNS = {
    "electra_pair": (
        [HERE / "corpus_a.txt", HERE / "corpus_b.txt"],
        ["--max-seq-length=48"],
        7,
    ),
    "electra_cased": (
        [HERE / "corpus_a.txt", HERE / "corpus_b.txt"],
        ["--max-seq-length=24", "--no-lower-case"],
        3,
    ),
    # Made for this test: short and long lines mixed (segments that are not contiguous runs), a 90-word line, a
    # line that tokenizes to nothing, whitespace-only lines and runs of blank lines.
    "electra_mixed": ([HERE / "electra_corpus.txt"], ["--max-seq-length=64"], 2020),
    "electra_long": ([ASSETS / "sample_corpus_eval.txt"], ["--max-seq-length=32"], 12345),
}

# Run in a child process: seeds the global `random` the original draws from, then calls its main().
CHILD = """
import random
import sys
sys.path.insert(0, sys.argv.pop(1))
seed = int(sys.argv.pop(1))
import build_pretraining_dataset as bpd
random.seed(seed)
bpd.main()
"""


def merge(output_dir: pathlib.Path, target: pathlib.Path) -> int:
    """The original's files read back in writing order (example n is record n // 1000 of file n % 1000), copied
    byte for byte into `target`; returns the number of examples."""
    import tensorflow as tf

    files = [
        list(
            tf.data.TFRecordDataset(
                str(output_dir / f"pretrain_data.tfrecord-{i}-of-{NUM_OUT_FILES}")
            )
        )
        for i in range(NUM_OUT_FILES)
    ]
    n = sum(len(f) for f in files)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for k in range(n):
            writer.write(files[k % NUM_OUT_FILES][k // NUM_OUT_FILES].numpy())
    return n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--original_dir", required=True)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    args = parser.parse_args()
    for name, (corpus, flags, seed) in RUNS.items():
        if args.only and name not in args.only.split(","):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            corpus_dir, output_dir = pathlib.Path(tmp, "corpus"), pathlib.Path(tmp, "out")
            corpus_dir.mkdir()
            for path in corpus:
                shutil.copy(path, corpus_dir / path.name)
            argv = [
                f"--corpus-dir={corpus_dir}",
                f"--vocab-file={VOCAB}",
                f"--output-dir={output_dir}",
                "--num-processes=1",
                *flags,
            ]
            cmd = [sys.executable, "-c", CHILD, args.original_dir, str(seed), *argv]
            subprocess.run(cmd, check=True, capture_output=True)
            n = merge(output_dir, HERE / f"{name}.tfrecord")
            print(name, f"seed={seed}", " ".join(argv[3:]), f"-> {n} examples")


if __name__ == "__main__":
    main()

"""Writes the bundled byte-level BPE (`sample_bpe/vocab.json` + `sample_bpe/merges.txt`): RoBERTa-Tiny's default
vocabulary, trained on the bundled training corpus (`sample_corpus.txt`, not its held-out slice) with the Rust
`tokenizers` library through `bert_jax.data.tokenizer.ByteLevelBPETokenizer.train`: 2,048 tokens (the 256 byte
symbols, fairseq's specials `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3 and `<mask>`=4, then merges), merges seen at
least twice. Training is deterministic (tokenizers 0.23.3 made the shipped files; tests/roberta_pretraining_test.py
retrains and compares them byte for byte):

    python -m bert_jax.assets.make_sample_bpe  # rewrites sample_bpe/ next to this file
"""

import pathlib

HERE = pathlib.Path(__file__).resolve().parent
# The tokens of the bundled BPE, about the bundled WordPiece vocab's 2,152.
VOCAB_SIZE = 2048
# A merge must occur at least this often in the corpus (the `tokenizers` trainer's default).
MIN_FREQUENCY = 2


def make(directory=HERE / "sample_bpe"):
    """Trains the bundled BPE into `directory`; returns the ByteLevelBPETokenizer."""
    from bert_jax.data.tokenizer import ByteLevelBPETokenizer

    files = [HERE / "sample_corpus.txt"]
    return ByteLevelBPETokenizer.train(files, directory, VOCAB_SIZE, MIN_FREQUENCY)


if __name__ == "__main__":
    print(f"{make().vocab_size} tokens")

"""Writes the RoBERTa golden files from fairseq's OWN dataset classes (run outside bert_jax; see README.md).

fairseq's masked_lm task stacks, for `--sample-break-mode complete`:
    TokenBlockDataset(lines, sizes, tokens_per_sample - 1, break_mode="complete") -> PrependTokenDataset(<s>)
    -> MaskTokensDataset.apply_mask(...)  (source: masked input; target: <pad> but the predicted originals)
This script feeds that stack the lines of `roberta_corpus.txt` as fairseq-preprocess binarizes them (each line's
ids then `</s>`; a blank line is a lone `</s>`, the document separator), bypassing only the binarization: the ids
come from the bundled byte-level BPE (`tokenizers`), its dictionary is fairseq's 4 specials then the BPE's other
ids in order (`<mask>` is id 4, as in bert_jax). fairseq's modules are imported one by one from a source tree
(`--fairseq_dir`, with its Cython `token_block_utils_fast` built in place) without `fairseq/__init__.py`, which
would import the whole toolkit (hydra, omegaconf, models); nothing in them is changed.

    PYTHONPATH=/work/fairseq_deps /work/venv/bin/python tests/golden/make_roberta_golden.py \
        --fairseq_dir=/work/fairseq_src/main --out=tests/golden/roberta_fairseq_main.npz
"""

import argparse
import importlib
import json
import pathlib
import sys
import types

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
BPE = HERE.parent.parent / "bert_jax" / "assets" / "sample_bpe"
# (tokens_per_sample, seeds, epochs) of each run: 64 and 32 tokens; fairseq's default seed 1 and another.
RUNS = [(64, (1, 7), (1, 2)), (32, (1,), (1, 3))]


def import_fairseq(root: pathlib.Path):
    """fairseq.data's needed modules, loaded from `root` as packages without running their __init__."""
    for name in ("fairseq", "fairseq.data", "fairseq.dataclass"):
        module = types.ModuleType(name)
        module.__path__ = [str(root / name.replace(".", "/"))]
        sys.modules[name] = module
    data = sys.modules["fairseq.data"]
    # The order fairseq/data/__init__.py imports them in; each module's names as that __init__ exports them.
    for module_name, names in [
        ("data_utils", []),
        ("dictionary", ["Dictionary"]),
        ("fairseq_dataset", ["FairseqDataset"]),
        ("base_wrapper_dataset", ["BaseWrapperDataset"]),
        ("lru_cache_dataset", ["LRUCacheDataset"]),
        ("plasma_utils", []),
        ("token_block_dataset", ["TokenBlockDataset"]),
        ("prepend_token_dataset", ["PrependTokenDataset"]),
        ("mask_tokens_dataset", ["MaskTokensDataset"]),
    ]:
        module = importlib.import_module(f"fairseq.data.{module_name}")
        setattr(data, module_name, module)
        for name in names:
            setattr(data, name, getattr(module, name))
    return data


def corpus_lines(path: pathlib.Path):
    """Each line's BPE ids (stripped; a blank line has none), as fairseq's BPE encoder writes them."""
    import tokenizers

    bpe = tokenizers.ByteLevelBPETokenizer(str(BPE / "vocab.json"), str(BPE / "merges.txt"))
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [bpe.encode(line).ids if line else [] for line in lines]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fairseq_dir", required=True, type=pathlib.Path)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args()
    import torch

    data = import_fairseq(args.fairseq_dir)
    vocab = json.loads((BPE / "vocab.json").read_text())
    dictionary = data.Dictionary()  # <s>=0 <pad>=1 </s>=2 <unk>=3, nspecial=4
    for token, index in sorted(vocab.items(), key=lambda kv: kv[1])[4:]:
        assert dictionary.add_symbol(token) == index, token
    mask_idx = dictionary.add_symbol("<mask>")  # MaskedLMTask.__init__: already there, id 4
    assert (len(dictionary), dictionary.nspecial, mask_idx) == (len(vocab), 4, 4)

    lines = corpus_lines(HERE / "roberta_corpus.txt")
    items = [torch.tensor(ids + [dictionary.eos()], dtype=torch.long) for ids in lines]
    sizes = np.array([len(item) for item in items])
    out = {"line_ids": np.concatenate([np.array(ids, np.int64) for ids in lines]),
           "line_lengths": np.array([len(ids) for ids in lines])}  # fmt: skip
    for tokens_per_sample, seeds, epochs in RUNS:
        blocks = data.TokenBlockDataset(
            items, sizes, tokens_per_sample - 1, pad=dictionary.pad(), eos=dictionary.eos(),
            break_mode="complete",
        )  # fmt: skip
        blocks = data.PrependTokenDataset(blocks, dictionary.bos())
        key = f"tps{tokens_per_sample}"
        out[f"{key}_blocks"] = torch.cat([blocks[i] for i in range(len(blocks))]).numpy()
        out[f"{key}_block_lengths"] = np.array([len(blocks[i]) for i in range(len(blocks))])
        for seed in seeds:
            for epoch in epochs:
                # Fresh datasets per epoch: apply_mask's outer LRUCacheDataset caches by index alone, so one
                # built for an earlier epoch would hand back that epoch's last 8 items.
                source, target = data.MaskTokensDataset.apply_mask(
                    blocks, dictionary, pad_idx=dictionary.pad(), mask_idx=mask_idx, seed=seed,
                    mask_prob=0.15, leave_unmasked_prob=0.1, random_token_prob=0.1,
                    freq_weighted_replacement=False, mask_whole_words=None,
                )  # fmt: skip
                source.set_epoch(epoch)
                target.set_epoch(epoch)
                name = f"{key}_seed{seed}_epoch{epoch}"
                out[f"{name}_source"] = torch.cat([source[i] for i in range(len(blocks))]).numpy()
                out[f"{name}_target"] = torch.cat([target[i] for i in range(len(blocks))]).numpy()
    # Ids fit in int16 (2,048 tokens); the lengths say where each item ends.
    np.savez_compressed(args.out, **{k: v.astype(np.int16) for k, v in out.items()})
    print(args.out, {k: v.shape for k, v in out.items() if "lengths" in k})


if __name__ == "__main__":
    main()

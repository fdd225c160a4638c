"""The endless per-host streams behind the pretraining loader: from a tokenized corpus (instances
made per epoch) or from instance files (records read in a per-epoch permutation).

A stream's `rows(start, count)` is a pure function of (seed, key, host, start, count): epochs are
keyed generators, so any row of any epoch can be rebuilt on a fresh process.
"""

from __future__ import annotations

import hashlib

import numpy as np
from etils import epath

from bert_jax.data import corpus as corpus_lib
from bert_jax.data import instances, masking


def keyed_rng(*keys: int) -> np.random.Generator:
    """A generator keyed by integers (seed, purpose, host, step, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def _file_name(path) -> str:
    """A file's name in a fingerprint: the bundled assets by their place in the package (the same on every
    host, wherever the package is installed), any other file by its path."""
    path = epath.Path(path)
    if str(path).startswith(str(corpus_lib.ASSETS)):
        return f"bert_jax/assets/{path.name}"
    return str(path)


def data_fingerprint(
    cfg,
    fields=("input_pattern", "phase2_input_pattern"),
    *,
    vocab_file: str = "",
    family: str = "bert",
) -> dict[str, object]:
    """{"file <name>": size in bytes, "vocab <name>": sha256 prefix} of what `cfg` (a data config) trains on:
    every file its `fields` match, and the recipe's `vocab_file` ("" = `family`'s bundled one; hashed: a vocab edited
    in place may keep its size). A pattern that matches nothing is recorded as such (the loader reports it as
    its own error)."""
    out: dict[str, object] = {}
    if cfg.get("source", "text") == "tfds":
        fields = ()  # TFDS data is named by the config (tfds_name, split), not by files
    for field in fields:
        pattern = cfg.get(field) or ("" if field == "input_pattern" else None)
        if pattern is None:
            continue
        try:
            paths = corpus_lib.expand_pattern(pattern)
        except (OSError, ValueError):
            out[f"files of data.{field}"] = "none found"
            continue
        for path in paths:
            try:
                out[f"file {_file_name(path)}"] = epath.Path(path).stat().length
            except OSError:
                out[f"file {_file_name(path)}"] = "unreadable"
    vocab = epath.Path(vocab_file or corpus_lib.sample_vocab(family))
    try:
        # A tokenizer directory (a byte-level BPE's vocab.json + merges.txt): its files, in name order.
        files = sorted(f for f in vocab.iterdir() if f.is_file()) if vocab.is_dir() else [vocab]
        content = b"".join(f.read_bytes() for f in files)
        out[f"vocab {_file_name(vocab)}"] = hashlib.sha256(content).hexdigest()[:16]
    except OSError:
        out[f"vocab {_file_name(vocab)}"] = "unreadable"
    return out


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """ "added FILE (N bytes)", "removed FILE", "FILE: N -> M bytes", "vocab FILE changed" from `old` to `new`."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        kind, _, name = key.partition(" ")
        if key not in old:
            changes.append(f"added {name} ({new[key]} bytes)" if kind == "file" else f"added {key}")
        elif key not in new:
            changes.append(f"removed {name}" if kind == "file" else f"removed {key}")
        elif kind == "vocab":
            changes.append(f"vocab {name} changed (content hash {old[key]} -> {new[key]})")
        else:
            changes.append(f"{name}: {old[key]} -> {new[key]} bytes")
    return changes


class CorpusStream:
    """This host's endless stream of unmasked instances from a tokenized corpus."""

    def __init__(
        self, corpus, seq_length, short_seq_prob, seed, key, cls_id, sep_id, sentence_order=False
    ):
        self.corpus, self.seq_length, self.short_seq_prob = corpus, seq_length, short_seq_prob
        self.seed, self.key, self.cls_id, self.sep_id = seed, key, cls_id, sep_id
        # ALBERT's sentence-order pairs instead of BERT's next-sentence pairs (instances.create_instance_specs).
        self.sentence_order = sentence_order
        self.epoch_sizes: list[int] = []
        self._cache: dict[int, np.ndarray] = {}

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            rng = keyed_rng(self.seed, self.key, epoch)
            specs = instances.create_instance_specs(
                self.corpus,
                self.seq_length,
                self.short_seq_prob,
                rng,
                sentence_order=self.sentence_order,
            )
            specs = specs[rng.permutation(len(specs))]
            if len(self._cache) >= 2:  # a batch spans at most two epochs
                self._cache.pop(min(self._cache))
            self._cache[epoch] = specs
            if epoch == len(self.epoch_sizes):
                self.epoch_sizes.append(len(specs))
        return self._cache[epoch]

    def rows(self, start: int, count: int) -> dict[str, np.ndarray]:
        """Instances [start, start + count) of the stream, padded to `seq_length`."""
        parts, epoch, offset = [], 0, start
        while True:
            if epoch == len(self.epoch_sizes):
                self._epoch(epoch)
            if offset < self.epoch_sizes[epoch]:
                break
            offset -= self.epoch_sizes[epoch]
            epoch += 1
        while count > 0:
            specs = self._epoch(epoch)[offset : offset + count]
            parts.append(specs)
            count -= len(specs)
            epoch, offset = epoch + 1, 0
        specs = np.concatenate(parts)
        out = instances.assemble(
            self.corpus.tokens, specs, self.seq_length, self.cls_id, self.sep_id
        )
        out["next_sentence_labels"] = specs[:, 4].astype(np.int32)
        return out


class RecordStream:
    """This host's endless stream from instance files: per epoch a permutation of the records
    in [lo, hi), host p taking entries p, p + P, ...; the leftover (hi - lo) mod P rotate with the
    permutation. `static` keeps the stored masks; otherwise they are undone for re-masking."""

    def __init__(self, source, index_range, seq_length, max_predictions, seed, key, hosts, static):
        self.source, (self.lo, self.hi) = source, index_range
        self.seq_length, self.max_predictions = seq_length, max_predictions
        self.seed, self.key, self.static = seed, key, static
        self.p, self.num_p = hosts
        self.per_epoch = (self.hi - self.lo) // self.num_p
        if self.per_epoch == 0:
            raise ValueError(
                f"{source.paths[0]}: {self.hi - self.lo} instances for {self.num_p} hosts"
            )
        self.epoch_sizes: list[int] = []
        self._perm: dict[int, np.ndarray] = {}

    def rows(self, start: int, count: int) -> dict[str, np.ndarray]:
        r = np.arange(start, start + count)
        epochs, k = r // self.per_epoch, r % self.per_epoch
        idx = np.empty(count, np.int64)
        for e in np.unique(epochs):
            if e not in self._perm:
                if len(self._perm) >= 2:
                    self._perm.pop(min(self._perm))
                self._perm[e] = keyed_rng(self.seed, self.key, e).permutation(self.hi - self.lo)
            sel = epochs == e
            idx[sel] = self.lo + self._perm[e][self.p + self.num_p * k[sel]]
        feats = self.source.batch(idx.tolist(), self.seq_length, self.max_predictions)
        if not self.static:
            feats["input_ids"] = masking.unmask(feats)
            for name in ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
                del feats[name]
        return feats

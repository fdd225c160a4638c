"""The pretraining loader: deterministic, resumable, multi-host MLM + NSP batches.

Every batch is a pure function of (seed, step, process_index, process_count). Each process owns
a disjoint share of the documents (or, for instance shards, of each epoch's permutation) and
reads it as an endless stream of epochs, each a fresh shuffle with fresh instances; host p's
batch at step s is rows [s*B, (s+1)*B) of its own stream, masked with a generator keyed by
(seed, step, process). So every host yields one batch per step forever (no end-of-epoch hang),
the union over hosts is the global batch without duplicates, and resuming needs only the step: the
state is the same on every host (a restored host recounts the epochs before its position).
"""

from __future__ import annotations

import queue
import threading
import zlib

import numpy as np
from absl import logging

from bert_jax.data import corpus as corpus_lib
from bert_jax.data import pretraining, records
from bert_jax.data.tokenizer import load_tokenizer

# 2: host-independent (no process_index, no per-host epoch sizes).
STATE_VERSION = 2
HOLDOUT_MODULUS = 50  # with no eval data given, ~2% of documents (by content hash) are held out


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


class CorpusStream:
    """This host's endless stream of unmasked instances from a tokenized corpus."""

    def __init__(self, corpus, seq_length, short_seq_prob, seed, key, cls_id, sep_id):
        self.corpus, self.seq_length, self.short_seq_prob = corpus, seq_length, short_seq_prob
        self.seed, self.key, self.cls_id, self.sep_id = seed, key, cls_id, sep_id
        self.epoch_sizes: list[int] = []
        self._cache: dict[int, np.ndarray] = {}

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            rng = _rng(self.seed, self.key, epoch)
            specs = pretraining.create_instance_specs(
                self.corpus, self.seq_length, self.short_seq_prob, rng
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
        out = pretraining.assemble(
            self.corpus.tokens, specs, self.seq_length, self.cls_id, self.sep_id
        )
        out["next_sentence_labels"] = specs[:, 4].astype(np.int32)
        return out


class RecordStream:
    """This host's endless stream from instance shards: per epoch a permutation of all records,
    host p taking entries p, p + P, ...; the N mod P left over rotate with the permutation."""

    def __init__(self, pattern, seq_length, seed, key, process_index, process_count):
        self.source = records.InstanceSource(pattern)
        self.seq_length, self.seed, self.key = seq_length, seed, key
        self.p, self.num_p = process_index, process_count
        self.per_epoch = len(self.source) // process_count
        if self.per_epoch == 0:
            raise ValueError(f"{pattern}: {len(self.source)} instances for {process_count} hosts")
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
                self._perm[e] = _rng(self.seed, self.key, e).permutation(len(self.source))
            sel = epochs == e
            idx[sel] = self._perm[e][self.p + self.num_p * k[sel]]
        feats = self.source.batch(idx.tolist(), self.seq_length)
        feats["input_ids"] = pretraining.unmask(feats)
        for name in ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
            del feats[name]
        return feats


class PretrainingLoader:
    """Per-host batches for global steps; phases switch sequence length at `phase2_start_step`."""

    def __init__(
        self,
        phases,
        *,
        batch_size,
        tokenizer,
        masking,
        seed,
        process_index,
        process_count,
        prefetch=2,
    ):
        self._phases = phases  # [(start_step, stream, seq_length, max_predictions)], sorted
        self.batch_size, self._tok, self._masking = batch_size, tokenizer, masking
        self.tokenizer = tokenizer  # the ids the model must cover (vocab_size)
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self._prefetch, self._next_step = prefetch, 0
        self._special = tokenizer.special_ids
        self._lock = threading.Lock()  # streams cache epochs; the prefetch thread shares them

    def _phase(self, step: int):
        return [p for p in self._phases if p[0] <= step][-1]

    def seq_length(self, step: int) -> int:
        return self._phase(step)[2]

    def max_predictions(self, step: int) -> int:
        return self._phase(step)[3]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's share of global step `step` (a pure function of seed, step and host)."""
        start, stream, _, max_pred = self._phase(step)
        with self._lock:
            feats = stream.rows((step - start) * self.batch_size, self.batch_size)
        rng = _rng(self.seed, 7, self.process_index, self.process_count, step)
        masked = pretraining.mask_tokens(
            feats["input_ids"],
            feats["attention_mask"],
            rng,
            max_predictions=max_pred,
            masked_lm_prob=self._masking["masked_lm_prob"],
            special_ids=self._special,
            mask_id=self._tok.mask_id,
            vocab_size=self._tok.vocab_size,
            is_continuation=self._tok.is_continuation if self._masking["whole_word"] else None,
        )
        feats.update(masked)
        return feats

    def iterate(self, start_step: int | None = None):
        """Yields (step, batch) from `start_step` (default: the restored step), prefetching."""
        step = self._next_step if start_step is None else start_step
        if self._prefetch <= 0:
            while True:
                yield step, self.batch(step)
                step += 1
        q: queue.Queue = queue.Queue(self._prefetch)
        stop = threading.Event()

        def put(item):
            while not stop.is_set():
                try:
                    return q.put(item, timeout=0.1)
                except queue.Full:
                    continue

        def work(s):
            try:
                while not stop.is_set():
                    put((s, self.batch(s)))
                    s += 1
            except BaseException as e:  # surfaced in the consumer, never lost in the thread
                put(e)

        thread = threading.Thread(target=work, args=(step,), daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()

    def get_state(self, step: int) -> dict:
        """JSON-serialisable state to resume at `step` (the next step to run), the same on every host.

        Each host derives its own position from it (batches are pure functions of seed, step and host), so
        one host writes it for all. It fingerprints what the data order depends on, which `set_state` checks.
        """
        return {
            "version": STATE_VERSION,
            "next_step": int(step),
            "seed": self.seed,
            "process_count": self.process_count,
            "global_batch_size": self.batch_size * self.process_count,
            "phases": [[int(p[0]), int(p[2]), int(p[3])] for p in self._phases],
        }

    def set_state(self, state: dict) -> None:
        """Restores a state from `get_state`; raises ValueError naming the field saved for another setup."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"data state version {state.get('version')}, this loader reads {STATE_VERSION}"
            )
        step = int(state["next_step"])
        mine = self.get_state(step)
        for key in ("seed", "process_count", "global_batch_size"):
            if state.get(key) != mine[key]:
                # Hosts own disjoint shares of the data: another count is another data order.
                hint = " (each host reads its own share)" if key == "process_count" else ""
                raise ValueError(
                    f"data state has {key}={state.get(key)}, this run {mine[key]}{hint}"
                )
        # The phases must agree on the steps already trained; later ones may move (more steps).
        past = lambda phases: [p for p in phases if p[0] < step]
        if past(state["phases"]) != past(mine["phases"]):
            raise ValueError(
                f"data phases (start, seq_length, max_predictions) before step {step} were "
                f"{past(state['phases'])}, this run has {past(mine['phases'])}"
            )
        self._next_step = step


def _held_out(doc: list[str], modulus: int = HOLDOUT_MODULUS) -> bool:
    return zlib.crc32(doc[0].encode("utf-8")) % modulus == 0


def _documents(cfg, pattern, process_index, process_count, stats, holdout):
    """This host's documents; `holdout` None keeps all, True/False keeps held-out/the rest."""
    source = cfg.get("source", "text")
    if source == "text":
        docs = corpus_lib.iter_text_documents(pattern, stats, process_index, process_count)
    elif source == "tfds":
        docs = corpus_lib.iter_tfds_documents(
            cfg.tfds_name,
            cfg.tfds_split,
            cfg.get("tfds_text_key", "text"),
            stats,
            process_index,
            process_count,
            cfg.get("tfds_data_dir", None),
        )
    else:
        raise ValueError(f"source {source!r} has no documents (expected 'text' or 'tfds')")
    if holdout is None:
        return docs
    modulus = cfg.get("eval_holdout_modulus", HOLDOUT_MODULUS)
    return (d for d in docs if _held_out(d, modulus) == holdout)


def _build(cfg, *, batch_size, phases, process_index, process_count, seed, eval_mode):
    vocab = cfg.get("vocab_file", "") or str(corpus_lib.SAMPLE_VOCAB)
    tok = load_tokenizer(vocab, do_lower_case=cfg.get("do_lower_case", True))
    source = cfg.get("source", "text")
    pattern = cfg.get("input_pattern", "") or ""
    eval_pattern = cfg.get("eval_input_pattern", None)
    if not pattern and eval_pattern is None and source == "text":
        eval_pattern = str(corpus_lib.SAMPLE_EVAL_CORPUS)  # the bundled corpus has its eval slice
    holdout = None
    if eval_mode:
        pattern, holdout = (eval_pattern, None) if eval_pattern else (pattern, True)
    elif not eval_pattern:
        holdout = False
    key0 = 1000 if eval_mode else 0
    streams = []
    if source == "instances":
        for i, (start, length, max_pred) in enumerate(phases):
            phase_pattern = cfg.get("phase2_input_pattern", None) if i else None
            streams.append(
                (
                    start,
                    RecordStream(
                        phase_pattern or pattern,
                        length,
                        seed,
                        key0 + i,
                        process_index,
                        process_count,
                    ),
                    length,
                    max_pred,
                )
            )
    else:
        stats = corpus_lib.CorpusStats()
        docs = _documents(cfg, pattern, process_index, process_count, stats, holdout)
        corpus = pretraining.TokenizedCorpus.from_documents(docs, tok, stats)
        # Over-long lines are kept and truncated with their pair (counted against phase 1).
        stats.long_sentences = int((np.diff(corpus.sentence_starts) > phases[0][1] - 3).sum())
        stats.log(f"pretraining corpus (host {process_index}/{process_count}, eval={eval_mode})")
        if corpus.num_documents < 2:
            raise ValueError(f"{pattern or cfg.get('tfds_name')}: fewer than 2 usable documents")
        for i, (start, length, max_pred) in enumerate(phases):
            stream = CorpusStream(
                corpus,
                length,
                cfg.get("short_seq_prob", 0.1),
                seed,
                key0 + i,
                tok.cls_id,
                tok.sep_id,
            )
            streams.append((start, stream, length, max_pred))
    masking = {
        "masked_lm_prob": cfg.get("masked_lm_prob", 0.15),
        "whole_word": cfg.get("whole_word_mask", False),
    }
    return PretrainingLoader(
        streams,
        batch_size=batch_size,
        tokenizer=tok,
        masking=masking,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )


def _per_host(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} not divisible by {process_count} hosts")
    return global_batch_size // process_count


def make_pretraining_loader(
    data_config,
    *,
    global_batch_size: int,
    num_train_steps: int,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
) -> PretrainingLoader:
    """The training loader: length `seq_length` until phase 2, then `phase2_seq_length`."""
    cfg = data_config
    phase2_start = round(num_train_steps * (1 - cfg.get("phase2_fraction", 0.1)))
    phases = [(0, cfg.get("seq_length", 128), cfg.get("max_predictions_per_seq", 20))]
    if phase2_start < num_train_steps:
        phases.append(
            (
                phase2_start,
                cfg.get("phase2_seq_length", 512),
                cfg.get("phase2_max_predictions_per_seq", 80),
            )
        )
    logging.info("data phases (start_step, seq_length, max_predictions): %s", phases)
    return _build(
        cfg,
        batch_size=_per_host(global_batch_size, process_count),
        phases=phases,
        process_index=process_index,
        process_count=process_count,
        seed=seed,
        eval_mode=False,
    )


def make_eval_batches(
    data_config,
    *,
    global_batch_size: int,
    num_batches: int,
    seq_length: int | None = None,
    max_predictions: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Fixed held-out MLM/NSP batches (this host's share), the same on every call.

    From `eval_input_pattern` when given, otherwise from the documents held out of training
    (those whose first sentence's CRC32 is 0 mod `eval_holdout_modulus`, default 50).
    """
    cfg = data_config
    length = seq_length or cfg.get("seq_length", 128)
    max_pred = max_predictions or cfg.get("max_predictions_per_seq", 20)
    loader = _build(
        cfg,
        batch_size=_per_host(global_batch_size, process_count),
        phases=[(0, length, max_pred)],
        process_index=process_index,
        process_count=process_count,
        seed=seed,
        eval_mode=True,
    )
    return [loader.batch(step) for step in range(num_batches)]

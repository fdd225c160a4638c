"""The pretraining loader: deterministic, resumable, multi-host MLM + NSP batches.

Every batch is a pure function of (seed, step, process_index, process_count). Each process owns
a disjoint share of the documents (or, for instance shards, of each epoch's permutation) and
reads it as an endless stream of epochs, each a fresh shuffle with fresh instances; host p's
batch at step s is rows [s*B, (s+1)*B) of its own stream, masked with a generator keyed by
(seed, step, process). So every host yields one batch per step forever (no end-of-epoch hang),
the union over hosts is the global batch without duplicates, and resuming needs only the step: the
state is the same on every host (a restored host recounts the epochs before its position).

Instance files (`source="instances"`: bert_jax's ArrayRecord or the original tool's TFRecords)
train with the masks stored in them (`masking="static"`, the paper's dupe_factor=10 setup) or
re-masked per step (`"dynamic"`, RoBERTa's). Phase 2 reads its own 512-token files
(`phase2_input_pattern`), checked at startup. Every data config field is read as `cfg.field`; the
defaults live in the recipe (`bert_jax/configs/pretraining.py`). The tokenizer is the recipe's top-level
`vocab_file` and `do_lower_case` (fine-tuning's names too), passed as arguments.

The recipe's model `family` picks the data path (`family_data.FAMILY_DATA`, the one place): BERT reads NSP pairs and masks
them as create_pretraining_data; RoBERTa reads FULL-SENTENCES rows (`full_sentences.py`) and masks them as
fairseq (`fairseq_replay`, its draws), from text or TFDS; ELECTRA reads build_pretraining_dataset.py's examples
(`electra_examples.py`) masked as BERT's with its own [MASK] share.
"""

from __future__ import annotations

import queue
import threading
import zlib

import numpy as np
from absl import logging

from bert_jax.data import albert_vocab, instances, packing, records
from bert_jax.data import corpus as corpus_lib
from bert_jax.data.family_data import check_family, data_path
from bert_jax.data.phases import eval_phase, pretraining_phases
from bert_jax.data.streams import (
    RecordStream,
    data_fingerprint,
    fingerprint_changes,
    keyed_rng,
)
from bert_jax.data.tokenizer import load_tokenizer

# 2: host-independent (no process_index, no per-host epoch sizes).
STATE_VERSION = 2
MASKINGS = ("static", "dynamic")


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
        max_sequences_per_row=None,
        row_multiple=1,
        mask_fn=None,
    ):
        self._phases = phases  # [(start_step, stream, seq_length, max_predictions)], sorted
        self.batch_size, self._masking = batch_size, masking
        self.tokenizer = tokenizer  # the ids the model must cover (vocab_size)
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self._prefetch, self._next_step = prefetch, 0
        self._lock = threading.Lock()  # streams cache epochs; the prefetch thread shares them
        # Packing (None = off): at most this many sequences per row, row counts multiples of row_multiple.
        self.max_sequences_per_row, self.row_multiple = max_sequences_per_row, row_multiple
        # The files and vocab trained on (streams.data_fingerprint), kept in the data state; None: not checked.
        self.fingerprint: dict | None = None
        # (features, rng, max_predictions, tokenizer, masking + the data seed) -> the masked fields: the family's
        # (family_data).
        self._mask_fn = mask_fn or data_path("bert")["mask"]

    def _phase(self, step: int):
        return [p for p in self._phases if p[0] <= step][-1]

    def seq_length(self, step: int) -> int:
        return self._phase(step)[2]

    def max_predictions(self, step: int) -> int:
        return self._phase(step)[3]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's share of global step `step` (a pure function of seed, step and host);
        packed (`bert_jax.data.packing`) when the loader packs."""
        feats = self.unpacked_batch(step)
        if self.max_sequences_per_row is None:
            return feats
        packed, _ = packing.pack_features(feats, **self.packing_shapes(step))
        return packed

    def packing_shapes(self, step: int) -> dict:
        """How step `step` is packed: `max_per_row`, the allowed row counts (`buckets`, the
        smallest that holds a step's sequences is used) and `predictions_per_row`."""
        _, _, length, max_pred = self._phase(step)
        k = self.max_sequences_per_row
        p = self._masking["masked_lm_prob"]
        return {
            "max_per_row": k,
            "buckets": packing.row_buckets(self.batch_size, k, self.row_multiple),
            "predictions_per_row": packing.prediction_budget(length, k, max_pred, p),
        }

    def unpacked_batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's share of global step `step`, one sequence per row."""
        start, stream, _, max_pred = self._phase(step)
        with self._lock:
            feats = stream.rows((step - start) * self.batch_size, self.batch_size)
        if "masked_lm_ids" in feats:  # static masking: the masks stored in the instances
            return feats
        rng = keyed_rng(self.seed, 7, self.process_index, self.process_count, step)
        if "_block" in feats:  # rows numbered by their stream: one number per row across all hosts
            feats["_block"] = feats["_block"] * self.process_count + self.process_index
        masking = {**self._masking, "seed": self.seed}
        feats.update(self._mask_fn(feats, rng, max_pred, self.tokenizer, masking))
        # Row bookkeeping ("_" keys) serves the masks, not the model.
        return {k: v for k, v in feats.items() if not k.startswith("_")}

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
            **({"files": self.fingerprint} if self.fingerprint is not None else {}),
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
        # Every epoch's order spans all files (a permutation of every record, or instances of the whole corpus),
        # so another file set or vocab changes the data of steps already trained: refused, never a warning.
        changes = fingerprint_changes(state.get("files", {}), mine.get("files", {}))
        if "files" in state and "files" in mine and changes:
            raise ValueError(
                f"the data differs from the checkpoint's: {'; '.join(changes)} (each epoch's order spans every "
                "file, so the steps already trained would have read other data; restore the files or use "
                "another --workdir)"
            )
        self._next_step = step


def _held_out(doc: list[str], modulus: int) -> bool:
    return zlib.crc32(doc[0].encode("utf-8")) % modulus == 0


def _documents(cfg, pattern, process_index, process_count, stats, holdout):
    """This host's documents; `holdout` None keeps all, True/False keeps held-out/the rest."""
    if cfg.source == "text":
        docs = corpus_lib.iter_text_documents(pattern, stats, process_index, process_count)
    else:
        docs = corpus_lib.iter_tfds_documents(
            cfg.tfds_name,
            cfg.tfds_split,
            cfg.tfds_text_key,
            stats,
            process_index,
            process_count,
            cfg.tfds_data_dir,
        )
    if holdout is None:
        return docs
    return (d for d in docs if _held_out(d, cfg.eval_holdout_modulus) == holdout)


def _check_config(cfg) -> None:
    for moved in ("vocab_file", "do_lower_case"):
        # A recipe of the previous release: its tokenizer fields would be silently ignored here.
        if moved in cfg:
            raise ValueError(f"data.{moved} is now the recipe's top-level {moved}")
    if cfg.source not in ("text", "tfds", "instances"):
        raise ValueError(f"data.source={cfg.source!r}: expected 'text', 'tfds' or 'instances'")
    if cfg.masking not in MASKINGS:
        raise ValueError(f"data.masking={cfg.masking!r}: expected 'static' or 'dynamic'")
    if cfg.masking == "static" and cfg.source != "instances":
        raise ValueError(
            f"data.masking='static' needs data.source='instances' ({cfg.source} has no stored masks)"
        )
    if cfg.eval_holdout_modulus < 2:
        raise ValueError(f"data.eval_holdout_modulus={cfg.eval_holdout_modulus}: must be >= 2")
    if cfg.packing:
        packing.check_settings(cfg.seq_length, cfg.max_sequences_per_row)


def _instance_source(cfg, field: str, seq_length: int):
    """The instance files of `cfg.<field>`, each checked to hold `seq_length`-token instances."""
    pattern = cfg[field]
    try:
        source = records.InstanceSource(pattern, cfg.skip_corrupt_records)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"data.{field}: {e}") from None
    for path, stored in source.stored_seq_lengths().items():
        wrong = stored != seq_length if field == "phase2_input_pattern" else stored > seq_length
        if wrong:
            raise ValueError(
                f"{path}: instances are {stored} tokens long, but data.{field} feeds "
                f"sequences of {seq_length} (regenerate it with --max_seq_length={seq_length})"
            )
    return source


def _record_streams(cfg, phases, seed, hosts, eval_mode):
    """Phase streams over instance files; without eval files, the last share is held out."""
    if not cfg.input_pattern:
        raise ValueError("data.input_pattern: required for data.source='instances'")
    if len(phases) > 1 and not cfg.phase2_input_pattern and not eval_mode:
        raise ValueError(
            "data.phase2_input_pattern: required for phase 2 with data.source='instances' "
            f"({phases[1][1]}-token instances; or set data.phase2_fraction=0)"
        )
    streams = []
    for i, (start, length, max_pred) in enumerate(phases):
        field = "phase2_input_pattern" if i else "input_pattern"
        if eval_mode and cfg.eval_input_pattern:
            field = "eval_input_pattern"
        source = _instance_source(cfg, field, length)
        lo, hi = 0, len(source)
        if not cfg.eval_input_pattern:
            # Instance files are shuffled when written, so their tail is a random sample.
            held = max(1, len(source) // cfg.eval_holdout_modulus)
            lo, hi = (hi - held, hi) if eval_mode else (0, hi - held)
        key = (1000 if eval_mode else 0) + i
        static = cfg.masking == "static"
        stream = RecordStream(source, (lo, hi), length, max_pred, seed, key, hosts, static)
        streams.append((start, stream, length, max_pred))
    return streams


def _build(
    cfg, *, vocab_file, do_lower_case, batch_size, phases, process_index, process_count, seed,
    eval_mode, row_multiple=1, family="bert",
):  # fmt: skip
    _check_config(cfg)
    check_family(cfg, family)
    path = data_path(family)
    tok = load_tokenizer(vocab_file or str(corpus_lib.sample_vocab(family)), do_lower_case)
    hosts = (process_index, process_count)
    if cfg.source == "instances":
        streams = _record_streams(cfg, phases, seed, hosts, eval_mode)
    else:
        streams = _corpus_streams(cfg, tok, phases, seed, hosts, eval_mode, path["stream"])
    masking_cfg = {"masked_lm_prob": cfg.masked_lm_prob, "whole_word": cfg.whole_word_mask}
    masking_cfg.update(_ngram_masking(cfg, tok))
    # ELECTRA's recipes give their own [MASK]/random shares (absent: BERT's 80/10).
    for share in ("mask_token_fraction", "random_token_fraction"):
        if share in cfg:
            masking_cfg[share] = cfg[share]
    loader = PretrainingLoader(
        streams,
        batch_size=batch_size,
        tokenizer=tok,
        masking=masking_cfg,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        max_sequences_per_row=cfg.max_sequences_per_row if cfg.packing else None,
        row_multiple=row_multiple,
        mask_fn=path["mask"],
    )
    loader.fingerprint = (
        None if eval_mode else data_fingerprint(cfg, vocab_file=vocab_file, family=family)
    )
    return loader


def _ngram_masking(cfg, tok) -> dict:
    """The masking's n-gram settings: `data.max_ngram` > 1 masks n-grams of whole words, words as ALBERT
    splits them (`albert_vocab.word_starts`)."""
    max_ngram = cfg.get("max_ngram", 1)
    if max_ngram <= 1:
        return {}
    return {"max_ngram": max_ngram, "continuation": ~albert_vocab.word_starts(tok)}


def _corpus_streams(cfg, tok, phases, seed, hosts, eval_mode, make_stream):
    """Phase streams (`make_stream`, the family's) over one tokenized text/TFDS corpus (held-out documents split
    off)."""
    pattern, eval_pattern = cfg.input_pattern, cfg.eval_input_pattern
    if not pattern and eval_pattern is None and cfg.source == "text":
        eval_pattern = str(corpus_lib.SAMPLE_EVAL_CORPUS)  # the bundled corpus has its eval slice
    holdout = None
    if eval_mode:
        pattern, holdout = (eval_pattern, None) if eval_pattern else (pattern, True)
    elif not eval_pattern:
        holdout = False
    stats = corpus_lib.CorpusStats()
    docs = _documents(cfg, pattern, *hosts, stats, holdout)
    corpus = instances.TokenizedCorpus.from_documents(docs, tok, stats)
    # Over-long lines are kept and truncated with their pair (counted against phase 1).
    stats.long_sentences = int((np.diff(corpus.sentence_starts) > phases[0][1] - 3).sum())
    stats.log(f"pretraining corpus (host {hosts[0]}/{hosts[1]}, eval={eval_mode})")
    if corpus.num_documents < 2:
        raise ValueError(f"{pattern or cfg.tfds_name}: fewer than 2 usable documents")
    key0 = 1000 if eval_mode else 0
    streams = []
    for i, (start, length, max_pred) in enumerate(phases):
        stream = make_stream(cfg, corpus, tok, length, seed, key0 + i)
        streams.append((start, stream, length, max_pred))
    return streams


def _per_host(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} not divisible by {process_count} hosts")
    return global_batch_size // process_count


def make_pretraining_loader(
    data_config,
    *,
    global_batch_size: int,
    num_train_steps: int,
    vocab_file: str = "",
    do_lower_case: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
    row_multiple: int = 1,
    family: str = "bert",
) -> PretrainingLoader:
    """The training loader: length `seq_length` until phase 2, then `phase2_seq_length` (`phases.py`).

    With `data.packing`, batches are packed into a step-dependent number of rows, always a
    multiple of `row_multiple` (pass the host's local device count so rows split evenly). `family` (the recipe's)
    picks the data path (`family_data.FAMILY_DATA`) and, with `vocab_file` "", the bundled vocabulary.
    """
    cfg = data_config
    rule = pretraining_phases(
        cfg, num_train_steps=num_train_steps, global_batch_size=global_batch_size
    )
    phases = [(p.start_step, p.seq_length, p.max_predictions) for p in rule]
    logging.info("data phases (start_step, seq_length, max_predictions): %s", phases)
    loader = _build(
        cfg,
        vocab_file=vocab_file,
        do_lower_case=do_lower_case,
        batch_size=_per_host(global_batch_size, process_count),
        phases=phases,
        process_index=process_index,
        process_count=process_count,
        seed=seed,
        eval_mode=False,
        row_multiple=row_multiple,
        family=family,
    )
    if cfg.packing:
        for start, *_ in phases:
            logging.info("packing from step %d: %s", start, loader.packing_shapes(start))
    return loader


def make_eval_batches(
    data_config,
    *,
    global_batch_size: int,
    num_batches: int,
    vocab_file: str = "",
    do_lower_case: bool = True,
    seq_length: int | None = None,
    max_predictions: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
    family: str = "bert",
) -> list[dict[str, np.ndarray]]:
    """Fixed held-out MLM/NSP batches (this host's share), the same on every call.

    From `eval_input_pattern` when given, otherwise from data held out of training: for text
    and TFDS the documents whose first sentence's CRC32 is 0 mod `eval_holdout_modulus`, for
    instance files the last 1/`eval_holdout_modulus` of their records.
    """
    cfg = data_config
    shape = eval_phase(cfg, global_batch_size=global_batch_size)
    length = seq_length or shape.seq_length
    max_pred = max_predictions or shape.max_predictions
    loader = _build(
        cfg,
        vocab_file=vocab_file,
        do_lower_case=do_lower_case,
        batch_size=_per_host(global_batch_size, process_count),
        phases=[(0, length, max_pred)],
        process_index=process_index,
        process_count=process_count,
        seed=seed,
        eval_mode=True,
        family=family,
    )
    return [loader.batch(step) for step in range(num_batches)]

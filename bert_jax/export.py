"""Getting a model out: bert_jax workdirs as checkpoints, and the conversion command.

    python -m bert_jax.convert --from=PATH --to=OUT --format=transformers|bert_jax|tf1 [--head=auto]

PATH is a transformers-layout directory, Google's TF1 checkpoint (directory or prefix) or a bert_jax workdir
(pretraining or fine-tuning; `--step` picks a checkpoint, default the latest). OUT receives:
  transformers  config.json (with num_labels/id2label), model.safetensors, vocab.txt,
                tokenizer_config.json (do_lower_case), special_tokens_map.json
  tf1           bert_config.json, vocab.txt, bert_model.ckpt.{index,data-00000-of-00001} (Google's names;
                the original run_classifier.py takes it as --init_checkpoint)
  bert_jax      OUT/checkpoints/0/ (parameters only) + vocab.txt: loads with load_pretrained(OUT)
At the end both models run on a fixed batch (the written one through transformers/PyTorch when the
target is the transformers layout and they are installed, else through bert_jax's reader) and the largest
difference is printed; above --tolerance (relative to the largest output) the command fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np
from etils import epath

from bert_jax import checkpoint, convert
from bert_jax.models import registry

FORMATS = ("transformers", "bert_jax", "tf1")
# The outputs compared after a conversion, per head.
_OUTPUTS = {
    "none": ("last_hidden_state", "pooler_output"),
    "pretraining": ("prediction_logits", "seq_relationship_logits"),
    "classification": ("logits",),
    "span": ("start_logits", "end_logits"),
    "token": ("logits",),
}


# ----------------------------------------------------------------------------------------------------------
# bert_jax workdirs and checkpoints.
# ----------------------------------------------------------------------------------------------------------
def read_workdir(path, step, overrides, do_lower_case) -> convert.Checkpoint:
    """Reads the parameters (all heads) of a bert_jax workdir's checkpoint, with its config and tokenizer."""
    from bert_jax.data import glue
    from bert_jax.data.corpus import SAMPLE_VOCAB
    from bert_jax.data.tokenizer import load_tokenizer

    workdir = epath.Path(os.path.abspath(path) if "://" not in str(path) else path)
    step, params, stored = checkpoint.restore_params(str(workdir / "checkpoints"), step)
    source = f"{workdir / 'checkpoints' / str(step)}"
    if "tokenizer" in stored:  # fine-tuning runs and exports
        spec = dict(stored["tokenizer"])
    else:  # pretraining runs: the data pipeline's tokenizer
        data = stored.get("data", {})
        spec = {"path": data.get("vocab_file") or str(SAMPLE_VOCAB)}
        spec["do_lower_case"] = data.get("do_lower_case", True)
    if not os.path.isabs(spec["path"]) and "://" not in spec["path"]:
        spec["path"] = str(workdir / spec["path"])
    if not epath.Path(spec["path"]).exists() and (workdir / "vocab.txt").exists():
        spec["path"] = str(workdir / "vocab.txt")  # an exported checkpoint that was moved or copied
    if do_lower_case is None:
        do_lower_case = spec.get("do_lower_case")
    tokenizer = load_tokenizer(spec["path"], do_lower_case=do_lower_case)
    fields = {k: v for k, v in stored["model"].items() if k in registry.config_fields()}
    if fields.get("vocab_size", -1) == -1:
        fields["vocab_size"] = tokenizer.vocab_size
    try:
        config = registry.config_from_fields({**fields, **overrides})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: stored model config: {e}") from e
    labels = stored.get("id2label")
    task = glue.TASKS.get(stored.get("task", ""))
    if labels is None and task is not None and task.labels:
        labels = list(task.labels)
    flat = convert.flat_params(params, "pretraining")
    head = stored.get("head") or convert._head_of(flat)
    return convert.Checkpoint(config, flat, tokenizer, do_lower_case, source, head, labels)


def write_bert_jax(out, params, ckpt: convert.Checkpoint, head: str) -> None:
    """OUT/checkpoints/0 (parameters only, Orbax) + the tokenizer files: a checkpoint load_pretrained and
    fine-tuning's init_checkpoint read like a workdir."""
    out = epath.Path(os.path.abspath(out))
    if (out / "checkpoints").exists():
        raise ValueError(f"{out / 'checkpoints'}: already exists; choose a new --to directory")
    out.mkdir(parents=True, exist_ok=True)
    convert.write_tokenizer(out, ckpt.tokenizer, ckpt.config, ckpt.do_lower_case)
    num_labels = convert.infer_num_labels(params, head)
    stored = {
        "mode": "export",
        "head": head,
        "model": dataclasses.asdict(ckpt.config),
        "tokenizer": {
            "path": str(out / "vocab.txt"),
            "do_lower_case": convert.tokenizer_lowercases(ckpt.tokenizer),
        },
        "num_labels": num_labels,
        "id2label": ckpt.labels,
        "source": ckpt.source,
    }
    writer = checkpoint.Checkpointer(
        str(out / "checkpoints"), keep=1, save_interval_steps=1, async_save=False
    )
    try:
        writer.save(0, {"params": params}, data_state={}, config=stored, force=True)
    finally:
        writer.close()


# ----------------------------------------------------------------------------------------------------------
# The check: both models on one fixed batch.
# ----------------------------------------------------------------------------------------------------------
def fixed_batch(config: registry.Config, tokenizer) -> dict[str, np.ndarray]:
    """Three sequences of random ids (one unpadded, two padded) with both segments: the same every run."""
    rng = np.random.default_rng(0)
    length = min(24, config.max_position_embeddings)
    ids = rng.integers(0, tokenizer.vocab_size, (3, length)).astype(np.int32)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, n in enumerate([length, length - 5, length // 2]):
        mask[row, :n] = 1
        types[row, n // 2 : n] = min(1, config.type_vocab_size - 1)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def sample_texts(tokenizer) -> list[str]:
    """Text made of the vocabulary's own words, some capitalised, to compare tokenizers on."""
    words = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    words = [w for w in words if w and w.isalpha() and not w.startswith("[")][:40]
    return [" ".join(words[:20]).capitalize() + ".", " ".join(words[20:]).upper() + " Ünïcödé!"]


def _transformers_outputs(out, head, batch):
    import torch
    import transformers

    cls = getattr(transformers, convert.ARCHITECTURES[head])
    reference = cls.from_pretrained(str(out)).eval()
    with torch.no_grad():
        outputs = reference(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()})
    return {
        k: outputs[k].numpy() for k in _OUTPUTS[head]
    }, transformers.AutoTokenizer.from_pretrained(str(out))


def check(out, fmt, ckpt, model, params, head, tolerance) -> float:
    """Runs the source model and the written one on `fixed_batch`; returns the max relative difference."""
    batch = fixed_batch(ckpt.config, ckpt.tokenizer)
    ours = model.apply({"params": params}, **batch)
    ours = {k: np.asarray(ours[k], np.float32) for k in _OUTPUTS[head]}
    texts = sample_texts(ckpt.tokenizer)
    theirs = None
    if fmt == "transformers":
        try:
            theirs, their_tokenizer = _transformers_outputs(out, head, batch)
            their_ids = [their_tokenizer(t)["input_ids"] for t in texts]
            reference = f"transformers {convert.ARCHITECTURES[head]}.from_pretrained(OUT)"
        except ImportError:  # no torch/transformers here: bert_jax's reader is the reference
            pass
    if theirs is None:
        written = convert.read_checkpoint(out)
        model2, params2 = convert.build(written, head)
        theirs = model2.apply({"params": params2}, **batch)
        their_ids = [written.tokenizer([t])["input_ids"][0].tolist() for t in texts]
        reference = f"bert_jax reading {out}"
    our_ids = [ckpt.tokenizer([t])["input_ids"][0].tolist() for t in texts]
    if our_ids != their_ids:
        raise ValueError(
            f"{out}: the written tokenizer gives other ids than the source's ({reference})"
        )
    scale = max(1.0, *(float(np.abs(v).max()) for v in ours.values()))
    diff = max(float(np.abs(ours[k] - np.asarray(theirs[k], np.float32)).max()) for k in ours)
    print(
        f"check: {', '.join(ours)} of the source vs {reference} on a fixed batch: "
        f"max |difference| {diff:.3g} ({diff / scale:.3g} relative; tolerance {tolerance:g})"
    )
    if diff / scale > tolerance:
        raise ValueError(
            f"{out}: conversion check failed: max relative difference {diff / scale:.3g} > {tolerance:g}"
        )
    return diff


# ----------------------------------------------------------------------------------------------------------
# The command.
# ----------------------------------------------------------------------------------------------------------
def convert_checkpoint(
    source, out, fmt, *, head="auto", do_lower_case=None, step=None, tolerance=1e-4
):
    """Converts `source` (any layout) to `fmt` in `out`, then checks it numerically; returns the max
    difference. Raises ValueError / FileNotFoundError with one line for bad input or a failed check."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r} is not one of {FORMATS}")
    ckpt = convert.read_checkpoint(source, do_lower_case=do_lower_case, step=step)
    head = ckpt.head if head == "auto" else head
    if fmt == "tf1" and head == "token":
        raise ValueError("--format=tf1: Google's code has no token-classification head")
    model, params = convert.build(ckpt, head)
    if fmt == "transformers":
        convert.save_pretrained(
            out,
            params,
            ckpt.config,
            head,
            tokenizer=ckpt.tokenizer,
            do_lower_case=ckpt.do_lower_case,
            id2label=ckpt.labels if head in ("classification", "token") else None,
        )
    elif fmt == "tf1":
        convert.save_tf1(out, params, ckpt.config, head, ckpt.tokenizer)
    else:
        write_bert_jax(out, params, ckpt, head)
    if ckpt.skipped:
        print(
            f"skipped {len(ckpt.skipped)} stored tensors that are not parameters (optimizer slots, step)"
        )
    print(f"wrote {fmt} ({head} head) from {ckpt.source} to {out}")
    return check(out, fmt, ckpt, model, params, head, tolerance)


def run(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bert_jax.convert", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--from", dest="source", required=True, help="checkpoint to read (any layout)"
    )
    parser.add_argument("--to", dest="out", required=True, help="output directory")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--head", default="auto", choices=("auto", *registry.HEADS))
    parser.add_argument("--do_lower_case", default="auto", choices=("auto", "true", "false"))
    parser.add_argument(
        "--step", type=int, default=None, help="workdir checkpoint step (default latest)"
    )
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    lower = {"auto": None, "true": True, "false": False}[args.do_lower_case]
    try:
        convert_checkpoint(
            args.source, args.out, args.format, head=args.head, do_lower_case=lower,
            step=args.step, tolerance=args.tolerance,
        )  # fmt: skip
    except (ValueError, OSError) as error:
        sys.exit(f"error: {str(error).strip().splitlines()[0]}")


if __name__ == "__main__":
    run()

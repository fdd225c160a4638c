r"""The benchmark's reference side: transformers' PyTorch model of each family, trained as a PyTorch user would.

`torch_timings(config, cfg, batch, ...)` times, on the benchmark's batch, the family's transformers model with the
loss bert_jax's objective computes (`config.objective`), and a whole step: the same plus the recipe's gradient
clipping and `torch.optim.AdamW` at the recipe's betas, epsilon and weight decay (not on LayerNorm or biases):

  bert     BertForPreTraining: MLM (its head at every position, as transformers does) + NSP;
  roberta  RobertaForMaskedLM: MLM alone;
  albert   AlbertForPreTraining: MLM + sentence-order prediction (the recipe's LAMB is AdamW here: torch has no
           LAMB, and at ALBERT's 12M parameters the update is a small part of the step);
  electra  transformers has no replaced-token-detection model, so `ElectraRtd` below writes it: an
           ElectraForMaskedLM generator (the recipe's generator size) and an ElectraForPreTraining discriminator
           sharing one embeddings module (word, position, type, LayerNorm; the generator's tied decoder is that
           word embedding), the generator's MLM head at the masked positions only (electra's gather), one draw
           per masked position from its softmax with the gradient stopped, the draws put back into the original
           sequence, and the loss mean MLM cross entropy + 50 x the discriminator's mean sigmoid cross entropy
           over the real tokens (electra's disc_weight), as bert_jax's `objectives.Rtd`.

Attention is SDPA; on a GPU with --dtype=bfloat16 the step runs under bf16 autocast with the fused AdamW, and
`compile_model` puts the model under `torch.compile`. `make_batch` and `time_steps` are the inputs and the clock
both sides share. torch is imported on the first call only, so importing
the benchmark costs nothing without a reference. No module here has a `__main__`: `bert_jax.benchmark` is the
command.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import numpy as np

from bert_jax.models import registry

# electra's disc_weight: the discriminator's loss is ~50x smaller than the generator's (objectives.Rtd's default).
DISC_WEIGHT = 50.0
# transformers' pretraining model of each family (ELECTRA's is written here: `ElectraRtd`).
MODELS = {
    "bert": "BertForPreTraining",
    "roberta": "RobertaForMaskedLM",
    "albert": "AlbertForPreTraining",
    "electra": "ElectraForMaskedLM + ElectraForPreTraining (RTD written in torch)",
}


def time_steps(step, state, steps: int, sync=None):
    """(seconds of the first call, seconds per later call, last state) of `step(state) -> state`.

    `sync(state)` waits for the device (default: `jax.block_until_ready`); it is called once after the first
    call and once after the rest.
    """
    if sync is None:
        import jax

        sync = jax.block_until_ready
    start = time.perf_counter()
    state = step(state)
    sync(state)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state = step(state)
    sync(state)
    return first, (time.perf_counter() - start) / steps, state


def make_batch(cfg, batch: int, length: int, predictions: int, seed: int = 0):
    """A random pretraining batch (NumPy) shaped like the data pipeline's, the inputs of both sides."""
    rng = np.random.default_rng(seed)
    positions = np.sort(
        np.stack(
            [rng.choice(np.arange(1, length), predictions, replace=False) for _ in range(batch)]
        ),
        1,
    )
    # Two segments where the family has token types (RoBERTa has one).
    second = length // 2 if cfg.type_vocab_size > 1 else length
    types = (np.arange(length)[None] >= second).astype(np.int32).repeat(batch, 0)
    return {
        "input_ids": rng.integers(5, cfg.vocab_size, (batch, length)).astype(np.int32),
        "token_type_ids": types,
        "attention_mask": np.ones((batch, length), np.int32),
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": rng.integers(5, cfg.vocab_size, (batch, predictions)).astype(np.int32),
        "masked_lm_weights": np.ones((batch, predictions), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (batch,)).astype(np.int32),
    }


def hf_config(cfg, **overrides):
    """transformers' config of the same model as `cfg` (any family's), with SDPA attention."""
    import transformers

    family = registry.family_of(cfg)
    if family.name == "bert":
        fields = {theirs: getattr(cfg, ours) for theirs, ours in family.hf.CONFIG_FIELDS.items()}
    else:
        fields = family.hf.config_to_hf(cfg)
    fields = {k: v for k, v in fields.items() if k != "model_type"}
    return transformers.AutoConfig.for_model(
        family.name, **fields, attn_implementation="sdpa", **overrides
    )


def _electra_rtd(cfg):
    """The ELECTRA pretraining model of the module docstring, as a torch module (torch is imported here)."""
    import torch
    import transformers
    from torch.nn import functional as F

    class ElectraRtd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.generator = transformers.ElectraForMaskedLM(hf_config(cfg.generator))
            self.discriminator = transformers.ElectraForPreTraining(hf_config(cfg))
            # One embeddings module for both (electra's shared "electra/embeddings" scope), and the generator's
            # decoder tied to its word embedding.
            shared = self.discriminator.electra.embeddings
            self.generator.electra.embeddings = shared
            self.generator.generator_lm_head.weight = shared.word_embeddings.weight

        def forward(self, input_ids, token_type_ids, attention_mask, positions, ids, weights):
            encoder = dict(token_type_ids=token_type_ids, attention_mask=attention_mask)
            hidden = self.generator.electra(input_ids, **encoder).last_hidden_state
            hidden = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
            head = self.generator.generator_predictions(hidden)
            logits = self.generator.generator_lm_head(head).float()
            cross = F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none")
            mlm = (cross * weights.flatten()).sum() / weights.sum().clamp(min=1e-5)
            with torch.no_grad():
                draw = torch.multinomial(torch.softmax(logits.flatten(0, 1), -1), 1)
                valid = weights > 0
                sampled = torch.where(valid, draw.view_as(ids), ids)
                original = input_ids.scatter(
                    1, positions, torch.where(valid, ids, input_ids.gather(1, positions))
                )
                fake = original.scatter(
                    1, positions, torch.where(valid, sampled, original.gather(1, positions))
                )
                labels = (fake != original).float()
            scores = self.discriminator(fake, **encoder).logits.float()
            real = attention_mask.float()
            disc = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
            return mlm + DISC_WEIGHT * (disc * real).sum() / real.sum().clamp(min=1e-5)

    return ElectraRtd()


def reference_model(cfg):
    """(the family's transformers pretraining model in train mode, loss(forward, inputs) -> scalar tensor)."""
    import transformers

    family = registry.family_of(cfg).name
    if family == "electra":
        return _electra_rtd(cfg), lambda forward, part: forward(**part)
    model = getattr(transformers, MODELS[family])(hf_config(cfg))
    return model, lambda forward, part: forward(**part).loss


def reference_inputs(family: str, batch, device) -> dict:
    """The benchmark's NumPy batch as the reference model's keyword arguments (int64 torch tensors)."""
    import torch

    tensor = lambda x, dtype=np.int64: torch.from_numpy(np.asarray(x).astype(dtype)).to(device)
    inputs = {k: tensor(batch[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}
    if family == "electra":
        return inputs | {
            "positions": tensor(batch["masked_lm_positions"]),
            "ids": tensor(batch["masked_lm_ids"]),
            "weights": tensor(batch["masked_lm_weights"], np.float32),
        }
    # MLM labels at the masked positions, -100 (ignored) elsewhere.
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    weighted = np.where(batch["masked_lm_weights"] > 0, batch["masked_lm_ids"], -100)
    np.put_along_axis(labels, batch["masked_lm_positions"], weighted, axis=1)
    inputs["labels"] = tensor(labels)
    pair = {"bert": "next_sentence_label", "albert": "sentence_order_label"}.get(family)
    if pair:
        inputs[pair] = tensor(batch["next_sentence_labels"])
    return inputs


def torch_timings(config, cfg, batch, steps: int, which: str, *, compile_model: bool):
    """{measure: {seconds, compile_seconds, peak_bytes}} for the family's reference (module docstring) on
    `batch`: `config` is the benchmark's recipe (its optimizer fields and grad_accum_steps), `cfg` the model's."""
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model, loss_of = reference_model(cfg)
    model = model.to(device).train()
    forward = torch.compile(model) if compile_model else model
    accum = config.grad_accum_steps
    inputs = reference_inputs(registry.family_of(cfg).name, batch, device)
    micro = [{k: v[i::accum] for k, v in inputs.items()} for i in range(accum)]
    # No weight decay on LayerNorm and biases, as the recipes' optimizers (and bert_jax's).
    params = list(model.parameters())  # shared parameters once
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(config.adam_b1, config.adam_b2),
        eps=config.adam_epsilon,
        fused=cuda,
    )
    autocast = (
        functools.partial(torch.autocast, device, dtype=torch.bfloat16)
        if cfg.dtype == "bfloat16"
        else contextlib.nullcontext
    )

    def fwdbwd(_):
        model.zero_grad(set_to_none=True)
        for part in micro:
            with autocast():
                loss = loss_of(forward, part) / accum
            loss.backward()

    def train(_):
        fwdbwd(None)
        if config.max_grad_norm > 0:  # RoBERTa's recipe clips nothing
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()

    sync = (lambda _: torch.cuda.synchronize()) if cuda else (lambda _: None)
    out = {}
    for name, fn in (("fwd+bwd", fwdbwd), ("train", train)):
        if which not in ("both", "fwdbwd" if name == "fwd+bwd" else "train"):
            continue
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        first, seconds, _ = time_steps(fn, None, steps, sync)
        out[name] = {
            "seconds": seconds,
            "compile_seconds": max(first - seconds, 0.0),
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        }
    return out

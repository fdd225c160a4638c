r"""Throughput and MFU of bert_jax beside transformers' PyTorch BERT, in one run on the present backend.

    python -m bert_jax.benchmark                       # bert_base, batch 8 x 128, CPU float32
    python -m bert_jax.benchmark --batch_size=256 --dtype=bfloat16 --reference=none   # on a GPU/TPU

Two measurements per implementation on identical inputs:
  fwd+bwd   forward and backward of the pretraining loss (MLM at the masked positions + NSP);
  train     a whole training step: the same plus gradient clipping and the AdamW update
            (bert_jax: `pretrain.train_step`; reference: `BertForPreTraining` + `torch.optim.AdamW`).
MFU counts the same model FLOPs for both (`flops.model_flops_per_sequence`: the MLM head at the masked
positions only, as in the paper's FLOP count), divided by the step time and by the backend's peak: on a CPU
a float32 matmul peak measured in this run, on an accelerator the table in `flops.PEAK_FLOPS`.
"""

from __future__ import annotations

import functools
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from bert_jax import flops, optim, pretrain
from bert_jax import model as model_lib
from bert_jax.configs import pretraining

_MODEL = flags.DEFINE_enum("model", "base", sorted(model_lib.PRESETS), "Model size preset.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences per step.")
_LENGTH = flags.DEFINE_integer("seq_length", 128, "Tokens per sequence.")
_PREDICTIONS = flags.DEFINE_integer("max_predictions", 20, "Masked positions per sequence.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per measurement (after one warm-up step).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "bert_jax compute dtype.")
_REFERENCE = flags.DEFINE_enum(
    "reference", "torch", ["torch", "none"], "Also time transformers' BERT."
)
_PRNG = flags.DEFINE_enum(
    "prng_impl",
    "threefry2x32",
    ["threefry2x32", "rbg", "unsafe_rbg"],
    "Generator of the dropout keys (the trainer's default).",
)
_ONLY = flags.DEFINE_enum("only", "both", ["both", "fwdbwd", "train"], "Which measurements to run.")


def make_batch(cfg: model_lib.BertConfig, batch: int, length: int, predictions: int, seed: int = 0):
    """A random pretraining batch (NumPy) shaped like the data pipeline's."""
    rng = np.random.default_rng(seed)
    positions = np.sort(
        np.stack(
            [rng.choice(np.arange(1, length), predictions, replace=False) for _ in range(batch)]
        ),
        1,
    )
    types = (np.arange(length)[None] >= length // 2).astype(np.int32).repeat(batch, 0)
    return {
        "input_ids": rng.integers(5, cfg.vocab_size, (batch, length)).astype(np.int32),
        "token_type_ids": types,
        "attention_mask": np.ones((batch, length), np.int32),
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": rng.integers(5, cfg.vocab_size, (batch, predictions)).astype(np.int32),
        "masked_lm_weights": np.ones((batch, predictions), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (batch,)).astype(np.int32),
    }


def time_steps(step, state, steps: int):
    """Seconds per call of `step(state) -> state` (one untimed warm-up call compiles)."""
    state = step(state)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state = step(state)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / steps


def bert_jax_timings(cfg, batch, steps, which):
    model = model_lib.BertForPreTraining(cfg)
    params = jax.jit(lambda: nn.unbox(model_lib.init_params(model, jax.random.key(0))))()
    batch = jax.tree.map(jnp.asarray, batch)
    rng = jax.random.key(1, impl=_PRNG.value)
    out = {}
    if which in ("both", "fwdbwd"):
        grad = jax.jit(jax.grad(lambda p: pretrain.objective(p, batch, rng, model=model)[0]))
        # The state threads (params, last gradients) so that timing blocks on the gradients.
        out["fwd+bwd"] = time_steps(lambda s: (s[0], grad(s[0])), (params, None), steps)
    if which in ("both", "train"):
        # The paper's optimizer, as the recipes set it.
        config = pretraining.get_config(_MODEL.value)
        config.update(warmup_steps=10, num_train_steps=1000)
        tx, schedule = optim.make_optimizer(config), optim.make_schedule(config)
        state = jax.jit(lambda p: optim.TrainState.create(p, tx))(params)
        step = jax.jit(
            functools.partial(pretrain.train_step, model=model, tx=tx, schedule=schedule),
            donate_argnums=0,
        )
        out["train"] = time_steps(lambda s: step(s, batch, rng)[0], state, steps)
    return out


def torch_timings(cfg, batch, steps, which):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
    )
    model = transformers.BertForPreTraining(hf_config).train()
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    np.put_along_axis(labels, batch["masked_lm_positions"], batch["masked_lm_ids"], axis=1)
    inputs = {
        k: torch.from_numpy(batch[k].astype(np.int64))
        for k in ("input_ids", "token_type_ids", "attention_mask")
    }
    inputs |= {
        "labels": torch.from_numpy(labels),
        "next_sentence_label": torch.from_numpy(batch["next_sentence_labels"].astype(np.int64)),
    }
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01
    )

    def fwdbwd(_):
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()

    def train(_):
        fwdbwd(None)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    out = {}
    if which in ("both", "fwdbwd"):
        out["fwd+bwd"] = time_steps(fwdbwd, None, steps)
    if which in ("both", "train"):
        out["train"] = time_steps(train, None, steps)
    return out


def main(argv):
    del argv
    cfg = model_lib.BertConfig(**model_lib.PRESETS[_MODEL.value], dtype=_DTYPE.value)
    b, length, p = _BATCH.value, _LENGTH.value, _PREDICTIONS.value
    batch = make_batch(cfg, b, length, p)
    step_flops = flops.model_flops_per_sequence(cfg, length, p) * b
    peak, peak_source = flops.peak_flops()
    print(
        f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), {jax.device_count()} device(s), "
        f"{os.cpu_count()} CPU cores; bert_{_MODEL.value} batch {b} x {length}, {p} predictions, {_DTYPE.value}"
    )
    print(
        f"peak {peak / 1e9:.0f} GFLOP/s ({peak_source}); model {step_flops / 1e9:.1f} GFLOP per step"
    )
    results = {"bert_jax": bert_jax_timings(cfg, batch, _STEPS.value, _ONLY.value)}
    if _REFERENCE.value == "torch":
        import torch

        results[f"torch {torch.__version__}"] = torch_timings(cfg, batch, _STEPS.value, _ONLY.value)
    print(
        f"{'implementation':<22}{'measure':<10}{'s/step':>9}{'seq/s':>9}{'tokens/s':>10}{'MFU':>8}"
    )
    for name, timings in results.items():
        for measure, seconds in timings.items():
            print(
                f"{name:<22}{measure:<10}{seconds:>9.3f}{b / seconds:>9.2f}{b * length / seconds:>10.0f}"
                f"{step_flops / seconds / peak:>8.1%}"
            )


if __name__ == "__main__":
    app.run(main)

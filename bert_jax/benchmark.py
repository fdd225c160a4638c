r"""Throughput, MFU, peak memory and compile time of bert_jax beside transformers' PyTorch model, in one run.

    python -m bert_jax.benchmark                       # bert_base, batch 8 x 128, float32, on a CPU
    python -m bert_jax.benchmark --family=electra --model=small --steps=3     # any family's recipe
    python -m bert_jax.benchmark --batch_size=256 --dtype=bfloat16 --reference=torch,torch_compile --only=train
    python -m bert_jax.benchmark --batch_size=256 --seq_length=512 --max_predictions=80 --grad_accum_steps=4 \
        --dtype=bfloat16 --reference=torch --only=train              # phase 2

`--family` (bert, roberta, albert, electra) picks the family's pretraining recipe (configs/pretraining.py,
roberta_base.py, albert_base.py, electra_small.py) and `--model` its size, at the flags' shape. Two measurements
per implementation on identical inputs:
  fwd+bwd   forward and backward of the recipe's pretraining loss (bert: MLM at the masked positions + NSP;
            roberta: MLM; albert: MLM + sentence order; electra: generator MLM + 50 x replaced-token detection);
  train     a whole training step: the same plus the recipe's gradient clipping and optimizer update
            (bert_jax: the trainer's own jitted step, built by `bert_jax.program` from the recipe at this
            shape on one device; reference: transformers' model + `torch.optim.AdamW`, `bert_jax.benchmark_torch`
            says which model per family and how ELECTRA's RTD loss is written in torch).
The reference runs as a PyTorch user would run it: SDPA attention, on a GPU bf16 autocast (with --dtype=
bfloat16) and the fused AdamW, and with `torch_compile` the model under `torch.compile`. Both apply the recipe's
dropout (0.1 for bert, roberta, electra; none for albert, as its v2 recipe).

MFU counts the same model FLOPs for both (`flops.model_flops_per_sequence`, the family's count: the MLM head at
the masked positions only, as in the paper's FLOP count; transformers computes it at every position, work not
credited; ALBERT's embedding projection and factorized head; ELECTRA's generator and discriminator), divided
by the step time and the backend's peak (a CPU: the float32 matmul peak measured in this run; an accelerator:
its bf16 table entry). `compile s` is bert_jax's lower + compile time, and for the reference the first
step's time minus a steady step's (torch.compile's compilation, cuDNN/cuBLAS warm-up). Peak memory is the
device allocator's peak (none on a CPU). `--json_out` also writes the rows as JSON (the GPU matrix reads it).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time

import jax
import numpy as np
from absl import app, flags

from bert_jax import flops, kernel_times, optim, run_setup, sharding, train_lib
from bert_jax import program as program_lib
from bert_jax.benchmark_torch import make_batch, time_steps, torch_timings
from bert_jax.configs import albert_base, electra_small, pretraining, roberta_base
from bert_jax.models import registry
from bert_jax.models.attention import ATTENTION_IMPLS
from bert_jax.models.bert import EMBEDDING_GRADIENTS

REFERENCES = ("torch", "torch_compile", "none")
# Each family's pretraining recipe, by size (the recipes the trainer runs).
RECIPES = {
    "bert": pretraining.get_config,
    "roberta": roberta_base.get_config,
    "albert": albert_base.get_config,
    "electra": electra_small.get_config,
}
_FAMILY = flags.DEFINE_enum("family", "bert", list(RECIPES), "Model family (its recipe).")
_MODEL = flags.DEFINE_string("model", "base", "The family's size preset (configs/sizes.py).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences per step.")
_LENGTH = flags.DEFINE_integer("seq_length", 128, "Tokens per sequence.")
_PREDICTIONS = flags.DEFINE_integer("max_predictions", 20, "Masked positions per sequence.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per measurement (after one warm-up step).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype of both.")
_ACCUM = flags.DEFINE_integer(
    "grad_accum_steps", 1, "Micro-batches per train step (both implementations)."
)
_ATTENTION = flags.DEFINE_enum(
    "attention_impl", "auto", ATTENTION_IMPLS, "bert_jax's attention_impl."
)
_ATTENTION_DROPOUT = flags.DEFINE_float(
    "attention_dropout_prob",
    None,
    "Dropout on attention probabilities, both implementations (default: the recipe's).",
)
_REFERENCE = flags.DEFINE_list(
    "reference", ["torch"], f"Comma-separated references to time, from {REFERENCES}."
)
_PRNG = flags.DEFINE_enum(
    "prng_impl",
    "threefry2x32",
    ["threefry2x32", "rbg", "unsafe_rbg"],
    "Generator of the dropout keys (the trainer's default).",
)
_OPTIMIZER = flags.DEFINE_enum(
    "optimizer", None, optim.OPTIMIZERS, "bert_jax's optimizer (default: the recipe's, bert_adam)."
)
_EMBEDDING_GRADIENT = flags.DEFINE_enum(
    "embedding_gradient",
    "scatter",
    EMBEDDING_GRADIENTS,
    "bert_jax's word-embedding gradient (bert_jax/models/lookup.py).",
)
_DATA = flags.DEFINE_enum(
    "data",
    "random",
    ["random", "corpus"],
    "The batch: uniform random ids, no padding ('random'), or the trainer's own first batch from the "
    "recipe's data (the bundled corpus: real token frequencies and its padding).",
)
_ONLY = flags.DEFINE_enum("only", "both", ["both", "fwdbwd", "train"], "Which measurements to run.")
_JSON = flags.DEFINE_string("json_out", None, "Also write the results as JSON to this file.")
_PROFILE = flags.DEFINE_string(
    "profile_dir",
    None,
    "Also trace 3 of bert_jax's train steps with jax.profiler into this folder and print the kernel table.",
)
PROFILE_STEPS = 3


def corpus_batch(
    model: str, batch: int, length: int, predictions: int, family: str = "bert"
) -> dict[str, np.ndarray]:
    """The trainer's first batch at this shape from the family recipe's data (its bundled corpus and vocab)."""
    from bert_jax.data.loader import make_pretraining_loader

    config = RECIPES[family](model)
    config.data.update(seq_length=length, max_predictions_per_seq=predictions, phase2_fraction=0.0)
    loader = make_pretraining_loader(
        config.data,
        global_batch_size=batch,
        num_train_steps=1,
        vocab_file=config.vocab_file,
        do_lower_case=config.do_lower_case,
        family=family,
    )
    return loader.batch(0)


def _jax_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def pretraining_config(
    model: str,
    batch_size: int,
    seq_length: int,
    predictions: int,
    *,
    dtype: str,
    grad_accum_steps: int = 1,
    attention_impl: str = "auto",
    attention_dropout_prob: float | None = None,
    prng_impl: str = "threefry2x32",
    optimizer: str | None = None,
    embedding_gradient: str = "scatter",
    family: str = "bert",
):
    """The trainer's recipe for `family`'s size `model` (`RECIPES`) at the benchmark's shape: one phase, one
    device, the recipe's optimizer and clipping past a short warmup. Raises SetupError naming `model` for a
    size the family lacks."""
    with run_setup.setup_error("model"):
        sizes = sorted(registry.presets(family))
        if model not in sizes:
            raise ValueError(f"size {model!r} is not one of {family}'s {sizes}")
    config = RECIPES[family](model)
    config.model.update(attention_impl=attention_impl, embedding_gradient=embedding_gradient)
    if attention_dropout_prob is not None:
        config.model.attention_dropout_prob = attention_dropout_prob
    config.data.update(
        seq_length=seq_length, max_predictions_per_seq=predictions, phase2_fraction=0.0
    )
    # A step, not the family's whole schedule: the flags' batch, on one device.
    config.update(
        dtype=dtype,
        global_batch_size=batch_size,
        grad_accum_steps=grad_accum_steps,
        prng_impl=prng_impl,
        mesh_shape=(1, 1, 1),
        warmup_steps=10,
        num_train_steps=1000,
    )
    if optimizer:
        config.optimizer = optimizer
    return config


def build_program(config) -> program_lib.Program:
    """`pretrain.run`'s program for `config` (`bert_jax.program.build`) on the first device."""
    mesh = train_lib.make_mesh(
        config.mesh_shape,
        {"global_batch_size": config.global_batch_size},
        config.grad_accum_steps,
        devices=jax.devices()[:1],
    )
    return program_lib.build(
        config,
        mesh,
        config.model.vocab_size,
    )


def bert_jax_timings(program: program_lib.Program, batch, steps: int, which: str, profile_dir=None):
    """{measure: {seconds, compile_seconds, peak_bytes}} for bert_jax's `program` (`build_program`).

    With `profile_dir`, `PROFILE_STEPS` more train steps run under `jax.profiler.trace` after the timing.
    """
    # Born on the program's shardings, as the trainer's (the key is an argument of the jitted init).
    state = train_lib.create_state(program.model, program.tx, program.abstract, jax.random.key(0))
    batch = sharding.host_to_global(batch, program.mesh)
    rng = jax.device_put(train_lib.dropout_key(program.config), program.abstract_rng().sharding)
    out = {}

    def measure(jitted, args, step, state, profile=False):
        start = time.perf_counter()
        compiled = jitted.lower(*args).compile()
        compile_seconds = time.perf_counter() - start
        _, seconds, state = time_steps(functools.partial(step, compiled), state, steps)
        if profile:
            with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
                time_steps(functools.partial(step, compiled), state, PROFILE_STEPS - 1)
        return {
            "seconds": seconds,
            "compile_seconds": compile_seconds,
            "peak_bytes": _jax_peak_bytes(),
        }

    if which in ("both", "fwdbwd"):
        grad = jax.jit(jax.grad(lambda p, b, r: program.objective.loss(p, b, r)[0]))
        params = state.params
        # The state threads (params, last gradients) so that timing blocks on the gradients.
        out["fwd+bwd"] = measure(
            grad, (params, batch, rng), lambda g, s: (s[0], g(s[0], batch, rng)), (params, None)
        )
    if which in ("both", "train"):
        # The trainer's jitted step: its shardings, its donated state.
        out["train"] = measure(
            program.train_step,
            (state, batch, rng),
            lambda c, s: c(s, batch, rng)[0],
            state,
            profile=profile_dir is not None,
        )
    return out


def run(
    model: str,
    batch_size: int,
    seq_length: int,
    predictions: int,
    *,
    dtype: str,
    references=("torch",),
    steps: int = 5,
    which: str = "both",
    profile_dir: str | None = None,
    data: str = "random",
    family: str = "bert",
    **recipe,
) -> dict:
    """Times every implementation; returns {"setup": {...}, "rows": [one dict per measurement]}. `recipe`:
    `pretraining_config`'s other keyword arguments (grad_accum_steps, attention_impl, optimizer, ...)."""
    unknown = sorted(set(references) - set(REFERENCES))
    if unknown:
        raise app.UsageError(f"--reference {unknown} not among {REFERENCES}")
    config = pretraining_config(
        model, batch_size, seq_length, predictions, dtype=dtype, family=family, **recipe
    )
    # The program's model config, before any JAX device is touched (the references run first).
    cfg = program_lib.model_config(config, config.model.vocab_size)
    if data == "corpus":
        batch = corpus_batch(model, batch_size, seq_length, predictions, family)
        if int(batch["input_ids"].max()) >= cfg.vocab_size:
            raise app.UsageError(f"--data=corpus: the recipe's vocab exceeds {family}_{model}'s")
    else:
        batch = make_batch(cfg, batch_size, seq_length, predictions)
    results = {}
    # The references run first: JAX's allocator reserves most of a GPU's memory once it starts.
    for reference in references:
        if reference == "none":
            continue
        import torch

        name = f"torch {torch.__version__}" + (" compile" if reference == "torch_compile" else "")
        results[name] = torch_timings(
            config, cfg, batch, steps, which, compile_model=reference == "torch_compile"
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the memory back before JAX's allocator takes its share
    ours = bert_jax_timings(build_program(config), batch, steps, which, profile_dir=profile_dir)
    results = {"bert_jax": ours} | results
    step_flops = flops.model_flops_per_sequence(cfg, seq_length, predictions) * batch_size
    peak, peak_source = flops.peak_flops()
    device = jax.devices()[0]
    setup = {
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "family": family,
        "model": model,
        "objective": config.objective,
        "optimizer": config.optimizer,
        "batch_size": batch_size,
        "seq_length": seq_length,
        "max_predictions": predictions,
        "grad_accum_steps": config.grad_accum_steps,
        "dtype": dtype,
        "attention_impl": cfg.attention_impl,
        "attention_dropout_prob": cfg.attention_dropout_prob,
        "hidden_dropout_prob": cfg.hidden_dropout_prob,
        "data": data,
        "embedding_gradient": cfg.embedding_gradient,
        "padding_fraction": float(1.0 - np.mean(batch["attention_mask"])),
        "peak_flops": peak,
        "peak_source": peak_source,
        "model_flops_per_step": step_flops,
    }
    rows = []
    for name, timings in results.items():
        for measure, r in timings.items():
            rows.append(
                {
                    "implementation": name,
                    "measure": measure,
                    "seconds": r["seconds"],
                    "sequences_per_sec": batch_size / r["seconds"],
                    "tokens_per_sec": batch_size * seq_length / r["seconds"],
                    "mfu": step_flops / r["seconds"] / peak,
                    "peak_bytes": r["peak_bytes"],
                    "compile_seconds": r["compile_seconds"],
                }
            )
    return {"setup": setup, "rows": rows}


def format_rows(rows) -> str:
    """The results as an aligned text table."""
    lines = [
        f"{'implementation':<27}{'measure':<9}{'s/step':>9}{'seq/s':>10}{'tokens/s':>11}{'MFU':>8}"
        f"{'peak GiB':>10}{'compile s':>11}"
    ]
    for r in rows:
        memory = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.2f}"
        lines.append(
            f"{r['implementation']:<27}{r['measure']:<9}{r['seconds']:>9.4f}"
            f"{r['sequences_per_sec']:>10.1f}{r['tokens_per_sec']:>11.0f}{r['mfu']:>8.1%}"
            f"{memory:>10}{r['compile_seconds']:>11.1f}"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    try:
        # A shape the model cannot take (longer than its positions, a batch accumulation cannot split).
        result = run(
            _MODEL.value,
            _BATCH.value,
            _LENGTH.value,
            _PREDICTIONS.value,
            dtype=_DTYPE.value,
            references=tuple(_REFERENCE.value),
            steps=_STEPS.value,
            which=_ONLY.value,
            grad_accum_steps=_ACCUM.value,
            attention_impl=_ATTENTION.value,
            attention_dropout_prob=_ATTENTION_DROPOUT.value,
            prng_impl=_PRNG.value,
            profile_dir=_PROFILE.value,
            optimizer=_OPTIMIZER.value,
            data=_DATA.value,
            embedding_gradient=_EMBEDDING_GRADIENT.value,
            family=_FAMILY.value,
        )
    except run_setup.SetupError as error:
        sys.exit(f"error: {error}")
    s = result["setup"]
    print(
        f"backend {s['backend']} ({s['device']}), {s['device_count']} device(s), {s['cpu_cores']} CPU cores, "
        f"jax {s['jax']}; {s['family']}_{s['model']} ({s['objective']}, {s['optimizer']}) batch {s['batch_size']} x {s['seq_length']}, "
        f"{s['max_predictions']} predictions, {s['dtype']}, attention {s['attention_impl']}, "
        f"grad_accum_steps {s['grad_accum_steps']}; data {s['data']} "
        f"({s['padding_fraction']:.0%} padding); embedding gradient {s['embedding_gradient']}"
    )
    print(
        f"peak {s['peak_flops'] / 1e9:.0f} GFLOP/s ({s['peak_source']}); "
        f"model {s['model_flops_per_step'] / 1e9:.1f} GFLOP per step"
    )
    print(format_rows(result["rows"]))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=1)
    if _PROFILE.value:
        print(kernel_times.table(_PROFILE.value, steps=PROFILE_STEPS, top=40))


if __name__ == "__main__":
    app.run(main)

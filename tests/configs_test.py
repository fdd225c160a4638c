"""The config recipes: the paper's schedule as the bert_base/bert_large defaults, every size, the schedule's
learning rate at the documented steps, the 128 -> 512 switch at step 900k, and every field documented."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bert_jax import optim
from bert_jax.data.loader import make_pretraining_loader
from bert_jax.models import registry

REPO = Path(__file__).resolve().parents[1]

from bert_jax.configs import (  # noqa: E402
    bert_base,
    bert_large,
    bert_medium,
    bert_mini,
    bert_small,
    bert_tiny,
)

SIZES = {
    bert_tiny: (2, 128, 2, 512),
    bert_mini: (4, 256, 4, 1024),
    bert_small: (4, 512, 8, 2048),
    bert_medium: (8, 512, 8, 2048),
    bert_base: (12, 768, 12, 3072),
    bert_large: (24, 1024, 16, 4096),
}


def _flat(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("module", [bert_base, bert_large], ids=["base", "large"])
def test_paper_schedule_is_the_default(module):
    c = module.get_config()
    assert (c.mode, c.num_train_steps, c.global_batch_size, c.grad_accum_steps) == (
        "pretrain",
        1_000_000,
        256,
        1,
    )
    assert (c.data.seq_length, c.data.max_predictions_per_seq) == (128, 20)
    assert (c.data.phase2_seq_length, c.data.phase2_max_predictions_per_seq) == (512, 80)
    assert (
        c.data.phase2_fraction == 0.1
        and c.data.masked_lm_prob == 0.15
        and c.data.short_seq_prob == 0.1
    )
    assert (c.optimizer, c.adam_b1, c.adam_b2, c.adam_epsilon, c.weight_decay) == (
        "bert_adam",
        0.9,
        0.999,
        1e-6,
        0.01,
    )
    assert (c.learning_rate, c.warmup_steps, c.max_grad_norm) == (1e-4, 10_000, 1.0)
    # The memory recipe that fits a v5e-16 / v4-32 / v5p-16 (docs/tpu.md): bfloat16 compute, float32 storage.
    remat = {bert_base: "none", bert_large: "dots"}[module]
    assert (c.dtype, c.param_dtype, c.model.remat_policy, tuple(c.mesh_shape)) == (
        "bfloat16", "float32", remat, (-1, 1, 1),
    )  # fmt: skip


@pytest.mark.parametrize("module", list(SIZES), ids=lambda m: m.__name__.split(".")[-1])
def test_sizes(module):
    c = module.get_config()
    m = c.model
    assert (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size) == SIZES[module]
    assert m.vocab_size == (-1 if module is bert_tiny else 30522)
    assert (m.max_position_embeddings, m.type_vocab_size, m.layer_norm_eps) == (512, 2, 1e-12)
    assert (m.hidden_act, m.hidden_dropout_prob, m.attention_dropout_prob) == ("gelu", 0.1, 0.1)
    assert m.initializer_range == 0.02
    fields = {**m.to_dict(), "dtype": c.dtype, "vocab_size": 30522}
    assert registry.config_from_fields(fields).head_dim == 64  # every size keeps 64-wide heads
    doc = module.__doc__
    name = module.__name__.split(".")[-1]
    assert f"python -m bert_jax.main --config=configs/{name}.py" in doc


def test_learning_rate_schedule_of_the_paper():
    """The recipes' default is the original code's schedule (linear decay from step 0 under the warmup)."""
    schedule = optim.make_schedule(bert_base.get_config())
    got = [float(schedule(s)) for s in (0, 5_000, 10_000, 505_000, 1_000_000)]
    assert got == pytest.approx([0.0, 5e-5, 0.99e-4, 0.495e-4, 0.0], rel=1e-6, abs=1e-12)  # float32
    # optax's AdamW option keeps the textbook shape: the full rate at the end of the warmup.
    c = bert_base.get_config()
    c.optimizer = "adamw"
    got = [float(optim.make_schedule(c)(s)) for s in (0, 5_000, 10_000, 505_000, 1_000_000)]
    assert got == pytest.approx([0.0, 5e-5, 1e-4, 5e-5, 0.0], rel=1e-6, abs=1e-12)


def test_length_switch_at_900k():
    """The real loader on the bert_base recipe (bundled corpus and vocab): 128/20 until 899,999, then 512/80."""
    c = bert_base.get_config()
    loader = make_pretraining_loader(c.data, global_batch_size=8, num_train_steps=c.num_train_steps)
    assert (loader.seq_length(899_999), loader.max_predictions(899_999)) == (128, 20)
    assert (loader.seq_length(900_000), loader.max_predictions(900_000)) == (512, 80)
    batch = loader.batch(900_000)
    assert batch["input_ids"].shape == (8, 512) and batch["masked_lm_positions"].shape == (8, 80)


def test_every_field_is_documented():
    docs = (REPO / "docs" / "configs.md").read_text()
    documented = set(re.findall(r"`([a-z0-9_.]+)`", docs))
    fields = {key for key, _ in _flat(bert_base.get_config())}
    assert sorted(fields - documented) == []


def test_configs_are_locked_by_the_entry_point():
    """config_flags locks the config: assigning an unknown key fails (tested end to end in main_test)."""
    c = bert_tiny.get_config()
    c.lock()
    with pytest.raises(AttributeError):
        c.learning_rat = 1.0


def test_recipes_import_no_jax():
    """Recipes are data: importing every bert_jax.configs module (and the sizes table) loads no JAX, Flax,
    Optax or Orbax, so a data tool or a config check never starts an accelerator runtime."""
    modules = sorted(p.stem for p in (REPO / "bert_jax" / "configs").glob("*.py"))
    assert {"pretraining", "sizes", "bert_base", "glue"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(f'bert_jax.configs.{name}').__name__\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'optax', 'orbax'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.stdout.strip() == "[]", out.stderr


def test_recipe_sizes_are_the_models_presets():
    """The one sizes table: the recipes' SIZES and the registry's BERT presets are the same data."""
    from bert_jax.configs import pretraining, sizes

    assert registry.presets("bert") is sizes.BERT
    assert pretraining.SIZES == ("tiny", "mini", "small", "medium", "base", "large")
    assert sizes.BERT["base"] == dict(
        num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072
    )

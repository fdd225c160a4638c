"""bert_jax: BERT pretraining, fine-tuning and evaluation in JAX/Flax.

`bert_jax.load_pretrained(path, head=...)` loads a checkpoint in the Hugging Face transformers layout, Google's
original TF1 layout (bert_config.json + bert_model.ckpt) or a bert_jax workdir; `save_pretrained` writes the
transformers layout. `python -m bert_jax.convert` converts between them (docs/models.md).
Attributes are imported lazily so that `bert_jax.data` (NumPy only) never pulls in JAX.
"""

from bert_jax import platforms as _platforms

# Before any bert_jax module imports JAX: no TPU probe (and its libtpu error lines) where no TPU is attached.
_platforms.skip_absent_tpu()

__version__ = "0.1.0"
__all__ = ["load_pretrained", "save_pretrained"]


def __getattr__(name):
    if name in __all__:
        from bert_jax import layouts

        return getattr(layouts, name)
    raise AttributeError(f"module 'bert_jax' has no attribute {name!r}")

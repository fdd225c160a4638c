"""What the SQuAD, SWAG and CoNLL-2003 recipes share: the GLUE recipe's model, optimizer, schedule, devices and
logging and evaluation fields (one place for those defaults), without its GLUE-only fields. Not a recipe itself: configs/squad.py, swag.py and conll.py call `base_config`."""

import ml_collections

from bert_jax.configs import glue

# Fields only the GLUE loop reads.
_GLUE_ONLY = ("task", "sweep", "sweep_batch_sizes", "sweep_learning_rates", "sweep_num_epochs",
              "sweep_seeds", "suite_tasks", "suite_from_mnli", "predict_test")  # fmt: skip


def base_config(mode: str, size: str) -> ml_collections.ConfigDict:
    """The GLUE recipe for `size` with `mode` set, GLUE-only fields removed, unlocked for the task recipe."""
    c = glue.get_config(size)
    c.unlock()
    for name in _GLUE_ONLY:
        if name in c:
            del c[name]
    # Which task bert_jax.main fine-tunes: "squad", "swag" or "conll" (bert_jax.tasks, by bert_jax.finetune).
    c.mode = mode
    return c

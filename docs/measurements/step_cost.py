"""The benchmark's compiled train step from any checkout: its cost analysis, op counts and step times.

    PYTHONPATH=/path/to/checkout JAX_PLATFORMS=cpu python docs/measurements/step_cost.py [adamw|bert_adam]

bert_base, 8 x 128, 20 predictions, float32, as `python -m bert_jax.benchmark` builds it. Prints the compiled
program's FLOPs and bytes accessed (`cost_analysis`), how many of each op it holds, then the min and median of
8 timed steps after 2 warm-ups. It was used to compare wave 1's HEAD (47225ef) with the trainer-library tree
(docs/performance.md, issue 11); for 47225ef, whose optimizer settings had built-in defaults, it builds the
config those defaults expect.
"""

import collections
import functools
import re
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import benchmark, optim, pretrain

try:  # the model wing (bert_jax/models/); older checkouts have bert_jax/model.py
    from bert_jax.models import bert as model_lib
except ImportError:
    from bert_jax import model as model_lib

OPS = ("fusion", "dot", "copy", "transpose", "scatter", "gather", "select", "reduce", "while")


def optimizer_config(name):
    if hasattr(optim, "_DEFAULTS"):  # wave 1: AdamW only, defaults inside optim.py
        import ml_collections

        return ml_collections.ConfigDict(
            dict(learning_rate=1e-4, warmup_steps=10, num_train_steps=1000)
        )
    from bert_jax.configs import pretraining

    config = pretraining.get_config("base")
    config.update(warmup_steps=10, num_train_steps=1000)
    if name:
        config.optimizer = name
    return config


def main(name=None):
    cfg = model_lib.BertConfig(**model_lib.PRESETS["base"], dtype="float32")
    model = model_lib.BertForPreTraining(cfg)
    batch = jax.tree.map(jnp.asarray, benchmark.make_batch(cfg, 8, 128, 20))
    params = jax.jit(lambda k: nn.unbox(model_lib.init_params(model, k)))(jax.random.key(0))
    config = optimizer_config(name)
    tx, schedule = optim.make_optimizer(config), optim.make_schedule(config)
    try:  # the objective owns the model (bert_jax/models/objectives.py); older checkouts bind the model
        from bert_jax.models import registry

        bound = {"objective": registry.objective("mlm_nsp", model)}
    except ImportError:
        bound = {"model": model}
    try:  # the generic steps live in bert_jax/program.py; older checkouts have them in the loop
        from bert_jax.program import train_step
    except ImportError:
        train_step = pretrain.train_step
    state = jax.jit(lambda p: optim.TrainState.create(p, tx))(params)
    step = jax.jit(
        functools.partial(train_step, **bound, tx=tx, schedule=schedule),
        donate_argnums=0,
    )
    rng = jax.random.key(1)
    compiled = step.lower(state, batch, rng).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", compiled.as_text()))
    print(
        f"flops {cost.get('flops', 0) / 1e9:.2f} G  bytes {cost.get('bytes accessed', 0) / 1e9:.2f} GB"
    )
    print("ops", {k: ops[k] for k in OPS})
    for _ in range(2):
        state, _ = compiled(state, batch, rng)
    jax.block_until_ready(state)
    times = []
    for _ in range(8):
        start = time.perf_counter()
        state, _ = compiled(state, batch, rng)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    print(f"step s: min {min(times):.3f} median {sorted(times)[4]:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)

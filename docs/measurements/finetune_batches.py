"""Fine-tuning batches on SST-2-like lengths: full rows vs each batch trimmed vs sorted into length buckets.

    nice -n 15 env JAX_PLATFORMS=cpu python docs/measurements/finetune_batches.py [tiny|mini] [steps]

Examples per second of a classification training step (forward, backward, AdamW) of bert_`size` at
max_seq_length 128, batch 32, on 2,048 synthetic examples whose lengths (with [CLS]/[SEP]) are lognormal,
median 12 tokens, sigma 0.6, clipped to [4, 66] (about SST-2's training phrases in WordPieces). Three ways:

* "full":    `batching.train_batches`, every batch 128 wide (today's default);
* "trimmed": the same batches cut to the ladder rung of their longest example (`batch_lengths="trim"`);
* "buckets": `batch_lengths="bucket"`, `packing.bucket_by_length` over the same ladder (examples of similar
             length batched together, cut to their bucket's bound; shuffled within and across buckets).

Every shape is compiled before timing; `steps` batches of each are timed.
"""

import sys
import time

import jax
import numpy as np
import optax

from bert_jax.configs.sizes import BERT
from bert_jax.data import batching
from bert_jax.models import bert

LENGTH, BATCH, EXAMPLES = 128, 32, 2048


def features(seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(12), 0.6, EXAMPLES)), 4, 66).astype(int)
    mask = (np.arange(LENGTH) < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": (rng.integers(5, 30000, (EXAMPLES, LENGTH)) * mask).astype(np.int32),
        "token_type_ids": np.zeros((EXAMPLES, LENGTH), np.int32),
        "attention_mask": mask,
        "labels": rng.integers(0, 2, EXAMPLES).astype(np.int32),
    }


def main(size="tiny", steps=40):
    sizes = {k: v for k, v in BERT[size].items() if k in ("hidden_size", "num_layers", "num_heads")}
    cfg = bert.BertConfig(**sizes, intermediate_size=4 * sizes["hidden_size"])
    model = bert.build_model(cfg, "classification", num_labels=2)
    feats = features()
    params = model.init(jax.random.key(0), feats["input_ids"][:1])["params"]
    tx = optax.adamw(2e-5)

    @jax.jit
    def step(params, opt, batch, rng):
        def loss(p):
            logits = model.apply(
                {"params": p}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                deterministic=False, rngs={"dropout": rng},
            )["logits"]  # fmt: skip
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    ways = {
        "full": list(batching.train_batches(feats, BATCH, seed=0, epoch=0)),
        "trimmed": list(
            batching.train_batches(feats, BATCH, seed=0, epoch=0, batch_lengths="trim")
        ),
        "buckets": list(
            batching.train_batches(feats, BATCH, seed=0, epoch=0, batch_lengths="bucket")
        ),
    }
    opt, rng = tx.init(params), jax.random.key(1)
    print(
        f"bert_{size}, batch {BATCH} x {LENGTH}, {jax.devices()[0].device_kind}, {steps} steps each"
    )
    for name, batches in ways.items():
        batches = [{k: v for k, v in b.items() if k != "weights"} for b in batches][:steps]
        for shape in sorted(
            {b["input_ids"].shape[1] for b in batches}
        ):  # compile every shape first
            b = next(b for b in batches if b["input_ids"].shape[1] == shape)
            jax.block_until_ready(step(params, opt, b, rng))
        start = time.perf_counter()
        p, o = params, opt
        for b in batches:
            p, o = step(p, o, b, rng)
        jax.block_until_ready(p)
        seconds = time.perf_counter() - start
        widths = np.mean([b["input_ids"].shape[1] for b in batches])
        print(
            f"{name:<8} mean width {widths:6.1f}  {len(batches) * BATCH / seconds:8.1f} examples/s"
        )


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["tiny"]), *[int(a) for a in sys.argv[2:3]])

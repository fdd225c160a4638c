"""Schedule, weight-decay mask, AdamW/LAMB against NumPy, gradient accumulation, TrainState."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bert_jax import optim, sharding
from bert_jax.models import bert as model_lib

FIELDS = (
    "learning_rate",
    "warmup_steps",
    "num_train_steps",
    "adam_b1",
    "adam_b2",
    "adam_epsilon",
    "weight_decay",
    "max_grad_norm",
    "optimizer",
)


def _config(**overrides):
    values = dict(
        learning_rate=1e-4,
        warmup_steps=10_000,
        num_train_steps=1_000_000,
        adam_b1=0.9,
        adam_b2=0.999,
        adam_epsilon=1e-6,
        weight_decay=0.01,
        max_grad_norm=1.0,
        optimizer="adamw",
    )
    values.update(overrides)
    return ml_collections.ConfigDict(values)


def test_bert_schedule_at_the_documented_steps():
    schedule = optim.make_schedule(_config())
    expected = {0: 0.0, 5_000: 5e-5, 10_000: 1e-4, 505_000: 5e-5, 1_000_000: 0.0}
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-6, abs=1e-12), step
    # Everywhere else: the piecewise-linear formula (warmup ramp, then a line from 1e-4 at 10k to 0 at 1M).
    steps = np.array([1, 777, 9_999, 10_001, 123_456, 900_000, 999_999])
    formula = np.where(steps < 10_000, 1e-4 * steps / 10_000, 1e-4 * (1e6 - steps) / 990_000)
    got = np.array([float(schedule(int(s))) for s in steps])
    np.testing.assert_allclose(got, formula, rtol=1e-5, atol=1e-10)  # float32: 1e-6 of the peak


def test_schedule_rejects_warmup_past_the_end():
    with pytest.raises(
        ValueError, match="warmup_steps 20 must be between 0 and num_train_steps 10"
    ):
        optim.make_schedule(_config(warmup_steps=20, num_train_steps=10))


def test_decay_mask_excludes_exactly_layer_norms_and_biases():
    config = model_lib.BertConfig(
        vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
    )
    model = model_lib.build_model(config, "pretraining")
    params = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
    mask = optim.weight_decay_mask(params)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    names = {"/".join(k.key for k in path): value for path, value in flat}
    no_decay = {name for name, decays in names.items() if not decays}
    expected = {
        "bert/embeddings/layer_norm/scale",
        "bert/embeddings/layer_norm/bias",
        "bert/pooler/bias",
        "mlm/transform/bias",
        "mlm/transform_layer_norm/scale",
        "mlm/transform_layer_norm/bias",
        "mlm/bias",
        "nsp/bias",
    }
    for i in range(2):
        layer = f"bert/layer_{i}"
        expected |= {f"{layer}/attention/{p}/bias" for p in ("query", "key", "value", "output")}
        expected |= {f"{layer}/intermediate/bias", f"{layer}/output/bias"}
        for norm in ("attention_layer_norm", "output_layer_norm"):
            expected |= {f"{layer}/{norm}/scale", f"{layer}/{norm}/bias"}
    assert no_decay == expected
    decayed = {name for name, decays in names.items() if decays}
    assert all(name.endswith(("kernel", "embedding")) for name in decayed)
    assert (
        len(decayed) == 3 + 2 * 6 + 3
    )  # 3 embeddings; q/k/v/out/ffn-in/ffn-out; pooler/transform/nsp
    assert all(isinstance(v, bool) for v in names.values())


def _decays_by_name(params):
    """The rule before decay went by rank: everything but biases and parameters under a LayerNorm module."""

    def decays(path, _):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        leaf, modules = names[-1], [n.lower() for n in names[:-1]]
        in_layer_norm = any("layer_norm" in m or "layernorm" in m for m in modules)
        return not (leaf == "bias" or in_layer_norm)

    return jax.tree_util.tree_map_with_path(decays, nn.unbox(params))


def _paths(mask, value):
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    return sorted("/".join(k.key for k in path) for path, v in flat if v is value)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["layers", "scanned"])
@pytest.mark.parametrize("head", model_lib.HEADS)
def test_decay_by_rank_decays_what_the_name_rule_did(head, scan_layers):
    """Every head, per-layer and scanned (stacked [layers, ...] params): the rank rule decays exactly the
    parameters the name rule decayed (kernels and embedding tables), and none of the others."""
    config = model_lib.BertConfig(
        vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
        scan_layers=scan_layers,
    )  # fmt: skip
    model = model_lib.build_model(config, head, num_labels=3)
    params = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
    by_rank, by_name = optim.weight_decay_mask(params), _decays_by_name(params)
    assert _paths(by_rank, True) == _paths(by_name, True)
    assert _paths(by_rank, False) == _paths(by_name, False)
    # The count: 3 embedding tables, then per layer (or once, stacked) q/k/v/out/ffn-in/ffn-out kernels,
    # then the heads' kernels (pooler, MLM transform, NSP, classifier or qa_outputs).
    layer_kernels = 6 * (1 if scan_layers else 2)
    head_kernels = {"none": 1, "pretraining": 3, "classification": 2, "span": 1, "token": 1}[head]
    assert len(_paths(by_rank, True)) == 3 + layer_kernels + head_kernels


def test_decay_by_rank_on_plain_arrays():
    """The optimizer calls the mask on unboxed arrays: a [3, 4] kernel decays, its [4] bias and a
    LayerNorm's [4] scale and bias do not; a lone [5, 4] table decays."""
    tree = {
        "dense": {"kernel": np.zeros((3, 4)), "bias": np.zeros(4)},
        "norm": {"scale": np.ones(4), "bias": np.zeros(4)},
        "table": {"embedding": np.zeros((5, 4))},
    }
    assert optim.weight_decay_mask(tree) == {
        "dense": {"kernel": True, "bias": False},
        "norm": {"scale": False, "bias": False},
        "table": {"embedding": True},
    }


def _tree(rng, scale=1.0):
    """A small float32 parameter-shaped tree: one dense layer and one LayerNorm."""
    tree = {
        "dense": {"kernel": scale * rng.normal(size=(3, 4)), "bias": scale * rng.normal(size=(4,))},
        "layer_norm": {"scale": 1 + scale * rng.normal(size=(4,)), "bias": rng.normal(size=(4,))},
    }
    return jax.tree.map(np.float32, tree)


def _numpy_optimizer(params, grads_list, lr_at, *, b1, b2, eps, wd, max_norm, lamb=False):
    """Textbook AdamW / LAMB in float64 NumPy: clip, moments, bias correction, decoupled decay."""
    decay = {"dense": {"kernel": 1.0, "bias": 0.0}, "layer_norm": {"scale": 0.0, "bias": 0.0}}
    p = jax.tree.map(np.float64, params)
    m = jax.tree.map(np.zeros_like, p)
    v = jax.tree.map(np.zeros_like, p)
    for t, g in enumerate(grads_list, start=1):
        norm = np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(g)))
        g = jax.tree.map(lambda x, n=norm: x * min(1.0, max_norm / n), g)
        m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_**2, v, g)

        def step(p_, m_, v_, d_, t=t):
            u = (m_ / (1 - b1**t)) / (np.sqrt(v_ / (1 - b2**t)) + eps) + wd * d_ * p_
            if lamb:
                pn, un = np.linalg.norm(p_), np.linalg.norm(u)
                u = u * (pn / un if pn > 0 and un > 0 else 1.0)
            return p_ - lr_at(t - 1) * u  # the t-th update uses the schedule at count t - 1

        p = jax.tree.map(step, p, m, v, decay)
    return p


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_optimizer_matches_numpy(name):
    rng = np.random.default_rng(0)
    params = _tree(rng)
    # Step 2's gradient is huge, so clipping at 1.0 is active there; the others are below the norm.
    grads_list = [_tree(rng, 0.1), _tree(rng, 50.0), _tree(rng, 0.2), _tree(rng, 0.1)]
    config = _config(
        learning_rate=0.05, warmup_steps=2, num_train_steps=10, weight_decay=0.1, optimizer=name
    )
    lr_at = lambda s: 0.05 * s / 2 if s < 2 else 0.05 * (10 - s) / 8
    want = _numpy_optimizer(
        params,
        grads_list,
        lr_at,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        wd=0.1,
        max_norm=1.0,
        lamb=name == "lamb",
    )
    tx = optim.make_optimizer(config)
    state = optim.TrainState.create(jax.tree.map(jnp.float32, params), tx)
    for g in grads_list:
        state = state.apply_gradients(jax.tree.map(jnp.float32, g), tx)
    assert int(state.step) == 4
    for got, expected, start in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(want), jax.tree.leaves(params), strict=True
    ):
        assert not np.allclose(expected, start)  # every leaf moved
        np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-5, atol=1e-6)


def test_lamb_differs_from_adamw():
    rng = np.random.default_rng(1)
    params, grads = _tree(rng), _tree(rng, 0.1)
    results = []
    for name in ("adamw", "lamb"):
        tx = optim.make_optimizer(_config(learning_rate=0.1, warmup_steps=0, optimizer=name))
        state = optim.TrainState.create(params, tx)
        results.append(state.apply_gradients(grads, tx).params["dense"]["kernel"])
    assert np.abs(np.asarray(results[0]) - np.asarray(results[1])).max() > 1e-3


def _loss(params, x, y):
    pred = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"])
    pred = pred * params["layer_norm"]["scale"] + params["layer_norm"]["bias"]
    return jnp.mean((pred - y) ** 2)


def test_train_state_create_and_jit_with_donation():
    rng = np.random.default_rng(3)
    params = jax.tree.map(jnp.float32, _tree(rng))
    tx = optim.make_optimizer(_config(learning_rate=0.01, warmup_steps=0, num_train_steps=5))
    state = optim.TrainState.create(params, tx)
    assert int(state.step) == 0 and state.step.dtype == jnp.int32
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(params))
    apply = jax.jit(functools.partial(optim.TrainState.apply_gradients, tx=tx), donate_argnums=0)
    eager = state.apply_gradients(_tree(np.random.default_rng(4)), tx)
    jitted = apply(state, _tree(np.random.default_rng(4)))
    assert int(jitted.step) == 1
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_config_fields_are_documented_and_checked():
    for field in FIELDS:
        assert field in optim.make_optimizer.__doc__, field
    with pytest.raises(ValueError, match="'sgd' is not one of"):
        optim.make_optimizer(_config(optimizer="sgd"))
    # Each default lives in the recipes: a missing field is an error naming it, not a silent default.
    minimal = ml_collections.ConfigDict(dict(learning_rate=0.01, warmup_steps=0, num_train_steps=5))
    with pytest.raises(AttributeError, match="optimizer"):
        optim.make_optimizer(minimal)


def test_abstract_state_shards_moments_like_their_parameters():
    config = model_lib.BertConfig(
        vocab_size=100, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
    )
    model = model_lib.build_model(config, "pretraining")
    boxed = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
    mesh = sharding.make_mesh((2, 2, 2))
    param_shardings = sharding.logical_shardings(boxed, mesh)
    tx = optim.make_optimizer(_config())
    abstract = optim.TrainState.abstract(boxed, param_shardings, tx)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    assert abstract.step.shape == () and abstract.step.sharding.spec == jax.sharding.PartitionSpec()
    want = jax.tree.leaves(param_shardings)
    assert [x.sharding for x in jax.tree.leaves(abstract.params)] == want
    adam_state = abstract.opt_state[1][0]  # chain(clip, adamw) -> adamw = chain(scale_by_adam, ...)
    for moments in (adam_state.mu, adam_state.nu):
        assert [x.sharding for x in jax.tree.leaves(moments)] == want
    assert adam_state.count.sharding.spec == jax.sharding.PartitionSpec()
    # Shapes and dtypes are those of a real state.
    real = jax.eval_shape(lambda: optim.TrainState.create(nn.unbox(boxed), tx))
    assert jax.tree.structure(real) == jax.tree.structure(abstract)
    for a, b in zip(jax.tree.leaves(real), jax.tree.leaves(abstract), strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)


def _numpy_original_bert_adam(params, grads_list, *, lr, warmup, total, b1, b2, eps, wd):
    """google-research/bert's optimization.py, transcribed to float64 NumPy: the learning rate is
    polynomial_decay(lr, step, total, power=1) replaced by lr * step / warmup while step < warmup; gradients
    clipped at global norm 1.0; m, v without bias correction; update = m / (sqrt(v) + eps) + wd * param on
    parameters whose name has no "LayerNorm"/"layer_norm"/"bias"; param -= lr * update."""
    decay = {"dense": {"kernel": 1.0, "bias": 0.0}, "layer_norm": {"scale": 0.0, "bias": 0.0}}
    p = jax.tree.map(np.float64, params)
    m = jax.tree.map(np.zeros_like, p)
    v = jax.tree.map(np.zeros_like, p)
    for step, g in enumerate(grads_list):  # global_step before the update: 0, 1, 2, ...
        rate = lr * (1 - min(step, total) / total)
        if step < warmup:
            rate = lr * step / warmup
        norm = np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(g)))
        g = jax.tree.map(lambda x, n=norm: x * 1.0 / max(n, 1.0), g)
        m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_**2, v, g)
        update = jax.tree.map(
            lambda m_, v_, p_, d_: m_ / (np.sqrt(v_) + eps) + wd * d_ * p_, m, v, p, decay
        )
        p = jax.tree.map(lambda p_, u_, r=rate: p_ - r * u_, p, update)
    return p


def test_bert_adam_matches_the_original_update_rule():
    """5 updates of the recipes' default optimizer equal a NumPy transcription of the original, parameter by
    parameter; the same run with optax's AdamW differs (bias correction), so the test can tell them apart."""
    rng = np.random.default_rng(7)
    params = _tree(rng)
    # The third gradient is large, so the global-norm clip is active there.
    grads_list = [
        _tree(rng, 0.1),
        _tree(rng, 0.3),
        _tree(rng, 40.0),
        _tree(rng, 0.2),
        _tree(rng, 0.1),
    ]
    fields = dict(learning_rate=0.05, warmup_steps=2, num_train_steps=8, weight_decay=0.1)
    want = _numpy_original_bert_adam(
        params, grads_list, lr=0.05, warmup=2, total=8, b1=0.9, b2=0.999, eps=1e-6, wd=0.1
    )
    final = {}
    for name in ("bert_adam", "adamw"):
        tx = optim.make_optimizer(_config(optimizer=name, **fields))
        state = optim.TrainState.create(jax.tree.map(jnp.float32, params), tx)
        for g in grads_list:
            state = state.apply_gradients(jax.tree.map(jnp.float32, g), tx)
        final[name] = state.params
    for got, expected, start in zip(
        jax.tree.leaves(final["bert_adam"]),
        jax.tree.leaves(want),
        jax.tree.leaves(params),
        strict=True,
    ):
        assert not np.allclose(expected, start)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-7)
    differs = [
        not np.allclose(np.asarray(a), b, rtol=1e-3)
        for a, b in zip(jax.tree.leaves(final["adamw"]), jax.tree.leaves(want), strict=True)
    ]
    assert all(differs)


def test_original_schedule_peaks_at_0_99_of_the_rate():
    """The original's decay runs from step 0 beneath the warmup: 0.99e-4 right after a 10k warmup of 1M."""
    schedule = optim.make_schedule(_config(optimizer="bert_adam"))
    got = [float(schedule(s)) for s in (0, 5_000, 9_999, 10_000, 505_000, 1_000_000)]
    want = [0.0, 5e-5, 1e-4 * 9_999 / 10_000, 0.99e-4, 0.495e-4, 0.0]
    assert got == pytest.approx(want, rel=1e-6, abs=1e-12)

"""ELECTRA: loading randomly initialised transformers models of every head with parity (and saving back), the
generator sharing the discriminator's embeddings, the replaced-token-detection loss against NumPy, the recipes,
and a tiny pretraining run whose loss falls."""

import functools
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import traverse_util

from bert_jax import layouts
from bert_jax.models import electra, objectives, registry

# Odd sizes: 3 heads of 12, embeddings 20 wide (projected to 36), nothing matching by accident.
SIZES = dict(
    vocab_size=97,
    embedding_size=20,
    hidden_size=36,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=37,
    max_position_embeddings=40,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)
# Three rows of 13, 8 and 4 real tokens, padded with [PAD] = 0.
LENGTHS = (13, 8, 4)
HEADS = {
    "none": ("ElectraModel", ("last_hidden_state",)),
    "pretraining": ("ElectraForPreTraining", ("logits",)),
    "masked_lm": ("ElectraForMaskedLM", ("logits",)),
    "classification": ("ElectraForSequenceClassification", ("logits",)),
    "span": ("ElectraForQuestionAnswering", ("start_logits", "end_logits")),
    "token": ("ElectraForTokenClassification", ("logits",)),
}


def write_vocab(directory):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(92)]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")


def ragged_batch(seed=0, length=13):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(LENGTHS), length), np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        ids[row, :n] = np.concatenate([[2], rng.integers(5, 97, n - 2), [3]])
        mask[row, :n] = 1
        types[row, n // 2 : n] = 1
    return ids, mask, types


def torch_model(directory, class_name, num_labels=3, seed=0, **sizes):
    """A randomly initialised transformers model (every weight perturbed off its init) saved to `directory`."""
    torch.manual_seed(seed)
    config = transformers.ElectraConfig(**{**SIZES, **sizes}, num_labels=num_labels)
    model = getattr(transformers, class_name)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(directory)
    write_vocab(directory)
    return model


def run_torch(model, ids, mask, types):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        )
    return {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def run_ours(model, params, ids, mask, types):
    out = model.apply(
        {"params": params},
        jnp.asarray(ids, jnp.int32),
        jnp.asarray(types, jnp.int32),
        jnp.asarray(mask, jnp.int32),
    )
    return {k: np.asarray(v) for k, v in out.items() if not isinstance(v, tuple)}


def assert_close(ours, theirs, names, mask):
    for name in names:
        a, b = ours[name], theirs[name]
        assert a.shape == b.shape, name
        if a.ndim >= 2 and a.shape[:2] == mask.shape:  # per-token outputs: pads are don't-cares
            a, b = a[mask > 0], b[mask > 0]
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=name)


def test_transformers_heads_load_with_parity_and_save_back(tmp_path):
    ids, mask, types = ragged_batch()
    for head, (class_name, names) in HEADS.items():
        directory = tmp_path / head
        theirs_model = torch_model(directory, class_name, {"token": 5, "span": 2}.get(head, 3))
        theirs = run_torch(theirs_model, ids, mask, types)
        model, params, tok = layouts.load_pretrained(directory, head=head)
        assert type(model.config) is electra.ElectraConfig, head
        assert (model.config.embedding_size, model.config.hidden_size) == (20, 36)
        assert tok.vocab_size == 97
        assert_close(run_ours(model, params, ids, mask, types), theirs, names, mask)

        # Ours -> a transformers directory -> transformers reads it and gives the same outputs.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # saved without tokenizer files
            layouts.save_pretrained(tmp_path / f"{head}_back", params, model.config, head)
        saved = json.loads((tmp_path / f"{head}_back" / "config.json").read_text())
        assert (saved["model_type"], saved["architectures"], saved["embedding_size"]) == (
            "electra",
            [class_name],
            20,
        )
        again = getattr(transformers, class_name).from_pretrained(tmp_path / f"{head}_back")
        assert_close(run_torch(again.eval(), ids, mask, types), theirs, names, mask)


def test_multiple_choice_and_equal_widths(tmp_path):
    # Multiple choice (SequenceSummary) and, with embedding_size == hidden_size (Base, Large), no projection.
    theirs_model = torch_model(tmp_path, "ElectraForMultipleChoice", 1, embedding_size=36)
    ids, mask, types = ragged_batch(seed=1)  # 3 rows = 1 question x 3 choices
    with torch.no_grad():
        theirs = theirs_model(
            input_ids=torch.tensor(ids[None]),
            attention_mask=torch.tensor(mask[None]),
            token_type_ids=torch.tensor(types[None]),
        ).logits.numpy()
    model, params, _ = layouts.load_pretrained(tmp_path, head="multiple_choice")
    assert "embeddings_project" not in params["bert"]
    ours = run_ours(model, params, ids, mask, types)["logits"]
    assert ours.shape == (3, 1) and theirs.shape == (1, 3)
    np.testing.assert_allclose(ours.reshape(1, 3), theirs, atol=1e-5, rtol=1e-5)


def tiny_config(**fields):
    # One layer per encoder: the RTD tests compile forward + backward of two encoders.
    return electra.ElectraConfig(
        vocab_size=97, embedding_size=20, hidden_size=36, num_layers=1, num_heads=3,
        intermediate_size=37, max_position_embeddings=40, generator_hidden_fraction=1 / 3,
        **fields,
    )  # fmt: skip


@functools.cache
def rtd_model_and_params():
    """The tiny pretraining model (dropout off) and its parameters, initialised once for the RTD tests."""
    model = registry.build(tiny_config(hidden_dropout_prob=0.0, attention_dropout_prob=0.0), "rtd")
    # Jitted: one compile costs less CPU than the init's hundreds of op-by-op dispatches.
    return model, jax.jit(registry.init_params, static_argnums=0)(model, jax.random.key(0))


def masked_batch():
    ids, mask, types = ragged_batch(seed=2)
    positions = np.array([[1, 5, 9], [2, 3, 0], [1, 0, 0]])
    weights = np.array([[1.0, 1, 1], [1, 1, 0], [1, 0, 0]], np.float32)
    original = np.take_along_axis(ids, positions, 1) * (weights > 0)
    masked = ids.copy()
    masked[0, 1], masked[0, 9], masked[1, 2], masked[2, 1] = (
        4,
        4,
        4,
        4,
    )  # [MASK]; (0, 5), (1, 3) kept
    return {
        "input_ids": jnp.asarray(masked, jnp.int32),
        "token_type_ids": jnp.asarray(types, jnp.int32),
        "attention_mask": jnp.asarray(mask, jnp.int32),
        "masked_lm_positions": jnp.asarray(positions, jnp.int32),
        "masked_lm_ids": jnp.asarray(original, jnp.int32),
        "masked_lm_weights": jnp.asarray(weights),
    }, ids


def pair_auc(scores, labels):
    """ROC AUC by its definition: the share of (positive, negative) pairs ordered right, ties one half (what
    sklearn's roc_auc_score computes)."""
    pos, neg = scores[labels > 0][:, None], scores[labels <= 0][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def test_rank_auc_sums_are_the_exact_auc_per_batch_and_add_over_batches():
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        labels = (rng.random((4, 50)) < 0.15).astype(np.int32)
        # Rounded scores: many ties, within a class and across; a pad of any score and label counts nothing.
        logits = np.round(rng.normal(size=(4, 50)) + 0.8 * labels, 1).astype(np.float32)
        weights = (rng.random((4, 50)) < 0.8).astype(np.float32)
        batches.append((logits, labels, weights))
    sums = [
        [float(x) for x in objectives.rank_auc_sums(*map(jnp.asarray, batch))] for batch in batches
    ]
    refs = []
    for (logits, labels, weights), (concordant, pairs) in zip(batches, sums, strict=True):
        real = weights > 0
        refs.append(
            (
                pair_auc(logits[real], labels[real]),
                (labels[real] > 0).sum() * (labels[real] == 0).sum(),
            )
        )
        assert pairs == refs[-1][1] and abs(concordant / pairs - refs[-1][0]) < 1e-6
    # Summed: the pair-weighted mean of the batches' AUCs.
    concordant, pairs = np.sum(sums, 0)
    expected = sum(a * n for a, n in refs) / sum(n for _, n in refs)
    assert abs(concordant / pairs - expected) < 1e-6 and 0.65 < expected < 0.85
    # A constant discriminator (every logit equal, as a collapsed one): 0.5 exactly.
    concordant, pairs = objectives.rank_auc_sums(
        jnp.zeros((4, 50)), jnp.asarray(batches[0][1]), jnp.ones((4, 50))
    )
    assert float(concordant) / float(pairs) == 0.5


def test_rtd_model_shares_embeddings_and_the_loss_is_numpy_exact():
    model, params = rtd_model_and_params()
    config = model.config
    assert (config.generator.hidden_size, config.generator.num_heads) == (12, 1)
    assert config.generator.intermediate_size == 48
    batch, original = masked_batch()
    names = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions")
    args = [batch[k] for k in (*names, "masked_lm_ids", "masked_lm_weights")]
    flat = traverse_util.flatten_dict(params, sep="/")
    # One embedding table for both encoders; each its own projection (E=20 -> 36 and -> 12).
    assert not any(k.startswith("generator/embeddings/") for k in flat)
    assert flat["generator/embeddings_project/kernel"].value.shape == (20, 12)
    assert flat["bert/embeddings_project/kernel"].value.shape == (20, 36)
    assert flat["mlm/transform/kernel"].value.shape == (12, 20)

    objective = registry.objective("rtd", model)
    loss, sums = objective.loss_sums(params, batch, None, deterministic=True)
    out = model.apply({"params": params}, *args, rngs={"sample": jax.random.key(0)})
    # The draws replace exactly the masked tokens; a draw equal to the original is labelled original.
    fake = original.copy()
    valid = np.asarray(batch["masked_lm_weights"]) > 0
    pos, sampled = np.asarray(batch["masked_lm_positions"]), np.asarray(out["sampled_ids"])
    for b, p in zip(*np.nonzero(valid), strict=True):
        fake[b, pos[b, p]] = sampled[b, p]
    np.testing.assert_array_equal(out["labels"], (fake != original).astype(np.int32))
    # The loss in NumPy from the model's logits.
    logp = np.asarray(jax.nn.log_softmax(out["generator_logits"], -1))
    ids = np.asarray(batch["masked_lm_ids"])
    mlm = -np.mean([logp[b, p, ids[b, p]] for b, p in zip(*np.nonzero(valid), strict=True)])
    z, y = np.asarray(out["logits"], np.float64), (fake != original).astype(np.float64)
    bce = np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0) - z * y
    real = np.asarray(batch["attention_mask"]) > 0
    disc = bce[real].mean()
    np.testing.assert_allclose(float(loss), mlm + 50.0 * disc, rtol=1e-5)
    assert (float(sums["disc_count"]), float(sums["mlm_weight_sum"])) == (25.0, 6.0)
    summary = objective.summarize({k: float(v) for k, v in sums.items()})
    np.testing.assert_allclose(summary["disc_loss"], disc, rtol=1e-5)
    assert summary["replaced_fraction"] == y[real].sum() / 25
    # electra's metric_fn over the real tokens: precision, recall, the draws' accuracy, the AUC by pairs.
    hit, truth = z[real] > 0, y[real] > 0
    assert summary["disc_accuracy"] == np.mean(hit == truth)
    np.testing.assert_equal(
        [summary["disc_precision"], summary["disc_recall"]],
        [
            (hit & truth).sum() / hit.sum() if hit.any() else np.nan,
            (hit & truth).sum() / truth.sum(),
        ],
    )
    assert summary["mlm_sampled_accuracy"] == np.mean(sampled[valid] == ids[valid])
    np.testing.assert_allclose(summary["disc_auc"], pair_auc(z[real], y[real]), rtol=1e-6)

    # No gradient flows through the draws: the discriminator's loss does not reach the generator's layers.
    def disc_only(p):
        o = model.apply({"params": p}, *args, rngs={"sample": jax.random.key(0)})
        return jnp.sum(objectives.sigmoid_cross_entropy(o["logits"], o["labels"]))

    grads = traverse_util.flatten_dict(jax.jit(jax.grad(disc_only))(params), sep="/")
    assert all(
        float(jnp.abs(g.value).max()) == 0.0 for k, g in grads.items() if k.startswith("generator/")
    )
    assert float(jnp.abs(grads["bert/embeddings/word_embeddings/embedding"].value).max()) > 0


def test_registry_entry_and_recipes():
    family = registry.family_named("electra")
    assert family.objectives == ("rtd",) and family.tf1.CONFIG_FILE == "hparams.json"
    assert (
        registry.objective_head("rtd") == "rtd" and registry.objective_head("mlm") == "pretraining"
    )
    from bert_jax.configs import electra_base, electra_small, electra_tiny

    small = electra_small.get_config()
    assert (small.family, small.objective, small.optimizer) == ("electra", "rtd", "bert_adam")
    assert (small.num_train_steps, small.global_batch_size, small.learning_rate) == (
        1_000_000, 128, 5e-4,
    )  # fmt: skip
    assert (small.warmup_steps, small.weight_decay, small.data.seq_length) == (10_000, 0.01, 128)
    config = registry.config_from_fields(dict(small.model), "electra")
    assert (config.embedding_size, config.hidden_size, config.generator.hidden_size) == (
        128,
        256,
        64,
    )
    base = electra_base.get_config()
    assert (base.num_train_steps, base.global_batch_size, base.learning_rate) == (
        766_000,
        256,
        2e-4,
    )
    assert base.data.seq_length == 512
    config = registry.config_from_fields(dict(base.model), "electra")
    assert (config.embedding_size, config.generator.hidden_size) == (768, 256)
    tiny = electra_tiny.get_config()
    assert tiny.family == "electra" and tiny.data.mask_token_fraction == 0.85


def test_electra_masking_shares_and_a_tiny_run_learns():
    import optax

    from bert_jax.data import masking

    # electra's pretrain_helpers.mask: of the chosen tokens 85% [MASK], 15% unchanged, no random token.
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 97, (64, 40))
    ids[:, 0], ids[:, -1] = 2, 3
    mask = np.ones_like(ids)
    out = masking.mask_tokens(
        ids, mask, rng, max_predictions=6, masked_lm_prob=0.15, special_ids=(0, 1, 2, 3, 4),
        mask_id=4, vocab_size=97, mask_token_fraction=0.85, random_token_fraction=0.0,
    )  # fmt: skip
    pos = out["masked_lm_positions"]
    now = np.take_along_axis(out["input_ids"], pos, 1)
    assert out["masked_lm_weights"].sum() == 64 * 6
    as_mask, kept = (now == 4).mean(), (now == out["masked_lm_ids"]).mean()
    assert abs(as_mask - 0.85) < 0.05 and as_mask + kept == 1.0
    assert not np.isin(pos, (0, 39)).any()

    # 40 Adam steps on one batch (fresh draws each step): the generator's loss and the total fall, and the
    # discriminator's loss falls under the entropy of the replaced share (what always answering "original"
    # scores; 0.357 vs 0.412 measured): it learns which tokens of this batch were replaced, not only how many,
    # so its head gets gradients and its labels and logits agree (electra_tiny's real run is slower to leave
    # that base rate: docs/models.md).
    model, params = rtd_model_and_params()
    objective = registry.objective("rtd", model)
    batch = {
        "input_ids": jnp.asarray(out["input_ids"][:16], jnp.int32),
        "token_type_ids": jnp.zeros((16, 40), jnp.int32),
        "attention_mask": jnp.ones((16, 40), jnp.int32),
        **{k: jnp.asarray(out[k][:16]) for k in ("masked_lm_positions", "masked_lm_ids")},
        "masked_lm_weights": jnp.asarray(out["masked_lm_weights"][:16]),
    }
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt, i):
        grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
        (loss, sums), grads = grad_fn(params, batch, jax.random.fold_in(jax.random.key(1), i))
        updates, opt = tx.update(grads, opt, params)
        disc = [sums[f"disc_{k}"] for k in ("loss_sum", "replaced_sum", "count")]
        return optax.apply_updates(params, updates), opt, loss, sums["mlm_loss_sum"], disc

    opt, history, disc = tx.init(params), [], []
    for i in range(40):
        params, opt, loss, mlm, d = step(params, opt, i)
        history.append((float(loss), float(mlm)))
        disc.append([float(x) for x in d])
    first, last = np.mean(history[:5], 0), np.mean(history[-5:], 0)
    assert last[0] < 0.8 * first[0] and last[1] < 0.8 * first[1], (first, last)
    loss_sum, replaced, count = np.sum(disc[-5:], 0)
    share = replaced / count
    entropy = -(share * np.log(share) + (1 - share) * np.log(1 - share))
    assert 0.05 < share < 0.25 and loss_sum / count < 0.93 * entropy, (loss_sum / count, entropy)


def test_workdir_generator_loads_as_masked_lm_and_pretraining_continues_from_it(tmp_path):
    import ml_collections
    from flax import linen as nn

    from bert_jax import export, warm_start
    from bert_jax.data.tokenizer import load_tokenizer

    # A bert_jax ELECTRA checkpoint of the pretraining model, every weight moved off its init.
    model, params = rtd_model_and_params()
    config = model.config
    leaves, tree = jax.tree.flatten(nn.unbox(params))
    keys = jax.random.split(jax.random.key(3), len(leaves))
    params = jax.tree.unflatten(
        tree, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )
    write_vocab(tmp_path)
    tokenizer = load_tokenizer(str(tmp_path / "vocab.txt"), do_lower_case=True)
    work = tmp_path / "work"
    ckpt = layouts.Checkpoint(config, {}, tokenizer, True, "test", "rtd", None)
    export.write_bert_jax(work, params, ckpt, "rtd")

    # head="masked_lm" is the generator (ElectraForMaskedLM as electra releases it): its own config, the
    # shared embeddings, its layers and MLM head; nothing initialised.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen, gen_params, tok = layouts.load_pretrained(work, head="masked_lm")
    assert gen.config == config.generator and gen.config.hidden_size == 12
    flat = traverse_util.flatten_dict(gen_params, sep="/")
    np.testing.assert_array_equal(
        flat["bert/layer_0/attention/query/kernel"],
        params["generator"]["layer_0"]["attention"]["query"]["kernel"],
    )
    ids, mask, types = ragged_batch(seed=4)
    ours = run_ours(gen, gen_params, ids, mask, types)["logits"]
    # The same logits as the pretraining model's generator, every token a prediction.
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    rtd = model.apply(
        {"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(types, jnp.int32),
        jnp.asarray(mask, jnp.int32), positions, jnp.asarray(ids, jnp.int32), jnp.ones(ids.shape),
    )  # fmt: skip
    np.testing.assert_allclose(
        ours[mask > 0], np.asarray(rtd["generator_logits"])[mask > 0], atol=1e-5, rtol=1e-5
    )
    # Converted to transformers' ElectraForMaskedLM (save_pretrained, checked), which gives the same logits.
    export.convert_checkpoint(work, tmp_path / "gen", "transformers", head="masked_lm")
    theirs = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "gen").eval()
    assert_close({"logits": ours}, run_torch(theirs, ids, mask, types), ["logits"], mask)
    # Every other head reads the discriminator.
    _, disc_params, _ = layouts.load_pretrained(work, head="pretraining")
    assert disc_params["bert"]["embeddings_project"]["kernel"].shape == (20, 36)

    # Continued pretraining: all four modules from the workdir; from a transformers discriminator directory
    # (ElectraForPreTraining alone, as released) the generator and its head start afresh, with one warning.
    layouts.save_pretrained(tmp_path / "disc", disc_params, config, "pretraining", tokenizer=tok)
    abstract = jax.eval_shape(lambda: params)
    run = ml_collections.ConfigDict(
        {
            "init_checkpoint": str(work),
            "dtype": "float32",
            "param_dtype": "float32",
            "family": "electra",
        }
    )
    loaded = warm_start.pretraining_params(run, type("Abstract", (), {"params": abstract}))
    assert sorted(loaded) == ["bert", "discriminator_predictions", "generator", "mlm"]
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(got, want)
    run.init_checkpoint = str(tmp_path / "disc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = warm_start.pretraining_params(run, type("Abstract", (), {"params": abstract}))
    assert sorted(loaded) == ["bert", "discriminator_predictions"]
    said = [str(w.message) for w in caught if "not in the checkpoint" in str(w.message)]
    assert (
        len(said) == 1 and "['generator', 'mlm']" in said[0] and "continued pretraining" in said[0]
    )


def test_hotter_draws_give_a_held_out_detection_signal():
    import dataclasses

    import optax

    from bert_jax.data import masking

    # Rows over a 36-token sub-vocabulary (ids 5..40 of 97): at generator_temperature 3 (electra_tiny's) the
    # generator's draws spread over the whole vocabulary.
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 41, (64, 40))
    ids[:, 0], ids[:, -1] = 2, 3
    out = masking.mask_tokens(
        ids, np.ones_like(ids), rng, max_predictions=6, masked_lm_prob=0.15,
        special_ids=(0, 1, 2, 3, 4), mask_id=4, vocab_size=97, mask_token_fraction=0.85,
        random_token_fraction=0.0,
    )  # fmt: skip

    def rows(a, b):
        return {
            "input_ids": jnp.asarray(out["input_ids"][a:b], jnp.int32),
            "attention_mask": jnp.ones((b - a, 40), jnp.int32),
            **{k: jnp.asarray(out[k][a:b]) for k in ("masked_lm_positions", "masked_lm_ids")},
            "masked_lm_weights": jnp.asarray(out["masked_lm_weights"][a:b]),
        }

    model, params = rtd_model_and_params()
    cold = registry.build(dataclasses.replace(model.config, generator_temperature=1e-4), "rtd")
    hot = registry.build(dataclasses.replace(model.config, generator_temperature=3.0), "rtd")
    # Near temperature 0 the draw is the generator's argmax: the temperature divides the logits.
    batch = rows(0, 4)
    args = [
        batch[k] for k in ("input_ids", "attention_mask", "masked_lm_positions", "masked_lm_ids")
    ]
    drawn = cold.apply(
        {"params": params}, args[0], None, *args[1:], batch["masked_lm_weights"],
        rngs={"sample": jax.random.key(5)},
    )  # fmt: skip
    np.testing.assert_array_equal(drawn["sampled_ids"], drawn["generator_logits"].argmax(-1))

    # 40 Adam steps on 16 rows at temperature 3, then 48 held-out rows: the discriminator ranks their replaced
    # tokens above the originals (AUC over the content tokens, [CLS]/[SEP] left out: 0.785 measured; 0.5 is
    # chance), so it learnt something that carries to new rows, not only the replaced share.
    objective = registry.objective("rtd", hot)
    train, held = rows(0, 16), rows(16, 64)
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt, i):
        grad_fn = jax.grad(
            lambda p: objective.loss(p, train, jax.random.fold_in(jax.random.key(1), i))[0]
        )
        updates, opt = tx.update(grad_fn(params), opt, params)
        return optax.apply_updates(params, updates), opt

    opt = tx.init(params)
    for i in range(40):
        params, opt = step(params, opt, i)
    outputs = jax.jit(objective.outputs, static_argnums=3)(params, held, None, True)
    content = jnp.ones((48, 40)).at[:, 0].set(0).at[:, -1].set(0)
    concordant, pairs = objectives.rank_auc_sums(outputs["logits"], outputs["labels"], content)
    assert float(concordant / pairs) > 0.7, float(concordant / pairs)
    assert float(jnp.mean(outputs["sampled_ids"] > 40)) > 0.3


def test_scatter_is_electras_scatter_update_with_repeated_positions():
    # electra draws masked positions with replacement: a position written twice takes the floor of the mean of its
    # writes (scatter_update's integer division); padding slots (weight 0, position 0) write nothing.
    ids = np.array([[2, 20, 21, 22, 3], [2, 30, 31, 32, 3]])
    positions = np.array([[1, 1, 3, 0], [2, 2, 0, 0]])
    values = np.array([[10, 13, 7, 99], [40, 40, 99, 99]])
    valid = np.array([[True, True, True, False], [True, True, False, False]])
    got = np.asarray(electra.scatter(ids, positions, values, valid))
    np.testing.assert_array_equal(got, [[2, 11, 21, 7, 3], [2, 30, 40, 32, 3]])

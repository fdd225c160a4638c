"""ALBERT: loading randomly initialised transformers models of every head with parity and saving back, the shared
layer really shared, the one-line refusals, the SOP pairs and n-gram masking of google-research/albert, ALBERT's
LAMB, the recipes, and a short tiny pretraining run whose loss falls."""

import json
import shutil
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from bert_jax import layouts
from bert_jax.data import albert_vocab, corpus
from bert_jax.models import albert, registry

SPM = corpus.ASSETS / "albert_sample_spm.model"
# Odd sizes: E = 10 (not H), 3 heads of 12, a feed-forward width that matches nothing, 3 passes of one layer.
SIZES = dict(
    vocab_size=1000,
    embedding_size=10,
    hidden_size=36,
    num_hidden_layers=3,
    num_attention_heads=3,
    intermediate_size=37,
    max_position_embeddings=40,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)
# The ragged batch: three rows of 13, 8 and 4 real tokens, padded with <pad> = 0.
LENGTHS = (13, 8, 4)
HEADS = {
    "none": ("AlbertModel", ("last_hidden_state", "pooler_output")),
    "pretraining": ("AlbertForPreTraining", ("prediction_logits", "sop_logits")),
    "masked_lm": ("AlbertForMaskedLM", ("logits",)),
    "classification": ("AlbertForSequenceClassification", ("logits",)),
    "span": ("AlbertForQuestionAnswering", ("start_logits", "end_logits")),
    "token": ("AlbertForTokenClassification", ("logits",)),
}


def ragged_batch(seed=0, length=13):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(LENGTHS), length), np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        ids[row, :n] = np.concatenate([[2], rng.integers(5, 1000, n - 2), [3]])
        mask[row, :n] = 1
        types[row, n // 2 : n] = 1
    return ids, mask, types


def torch_model(directory, class_name, num_labels=3, seed=0):
    """A randomly initialised transformers model (every weight perturbed off its init) saved to `directory`
    with the bundled SentencePiece model as its tokenizer."""
    torch.manual_seed(seed)
    config = transformers.AlbertConfig(**SIZES, num_labels=num_labels)
    model = getattr(transformers, class_name)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(directory)
    shutil.copy(SPM, directory / "spiece.model")
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
        num_labels = {"token": 5, "span": 2, "pretraining": 2}.get(head, 3)
        theirs_model = torch_model(tmp_path / head, class_name, num_labels)
        theirs = run_torch(theirs_model, ids, mask, types)
        model, params, tok = layouts.load_pretrained(tmp_path / head, head=head)
        assert type(model.config) is albert.AlbertConfig, head
        assert (model.config.embedding_size, model.config.hidden_act) == (10, "gelu_new")
        assert (tok.vocab_size, tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (
            1000,
            0,
            2,
            3,
            4,
        )
        assert_close(run_ours(model, params, ids, mask, types), theirs, names, mask)

        # Ours -> a transformers directory -> transformers reads it and gives the same outputs.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # saved without tokenizer files
            layouts.save_pretrained(tmp_path / f"{head}_back", params, model.config, head)
        saved = json.loads((tmp_path / f"{head}_back" / "config.json").read_text())
        assert (saved["model_type"], saved["architectures"]) == ("albert", [class_name])
        again = getattr(transformers, class_name).from_pretrained(tmp_path / f"{head}_back").eval()
        assert_close(run_torch(again, ids, mask, types), theirs, names, mask)


def test_multiple_choice_scores_each_choice_as_one_row(tmp_path):
    theirs_model = torch_model(tmp_path / "hf", "AlbertForMultipleChoice", num_labels=1)
    ids, mask, types = ragged_batch(seed=1)  # 3 rows = 1 question x 3 choices
    with torch.no_grad():
        theirs = theirs_model(
            input_ids=torch.tensor(ids[None]),
            attention_mask=torch.tensor(mask[None]),
            token_type_ids=torch.tensor(types[None]),
        ).logits.numpy()
    model, params, _ = layouts.load_pretrained(tmp_path / "hf", head="multiple_choice")
    ours = run_ours(model, params, ids, mask, types)["logits"]
    assert ours.shape == (3, 1) and theirs.shape == (1, 3)
    np.testing.assert_allclose(ours.reshape(1, 3), theirs, atol=1e-5, rtol=1e-5)


def tiny_config(**overrides):
    fields = dict(
        vocab_size=1000, embedding_size=10, hidden_size=36, num_layers=3, num_heads=3,
        intermediate_size=37, max_position_embeddings=40,
    )  # fmt: skip
    return albert.AlbertConfig(**{**fields, **overrides})


def test_shared_layer_is_one_bert_layer_and_shards_like_it():
    from flax import traverse_util

    def shapes_and_axes(params, root):
        flat = traverse_util.flatten_dict(params[root])
        return {k: (v.value.shape, v.names) for k, v in flat.items()}

    ours = registry.init_params(albert.AlbertModel(tiny_config()), jax.random.key(0))
    one = registry.init_params(albert.AlbertModel(tiny_config(num_layers=1)), jax.random.key(0))
    count = lambda tree: sum(x.size for x in jax.tree.leaves(nn.unbox(tree)))
    # Three passes, one layer's parameters: the count does not grow with num_layers.
    assert count(ours) == count(one)
    assert sorted(ours) == ["embeddings", "pooler", "shared_layer"]
    bert_config = registry.config_from_fields(
        dict(vocab_size=1000, hidden_size=36, num_layers=1, num_heads=3, intermediate_size=37,
             max_position_embeddings=40)
    )  # fmt: skip
    bert_params = registry.init_params(registry.build(bert_config), jax.random.key(0))
    # The shared layer is BERT's layer: the same names, shapes and logical axes.
    assert shapes_and_axes(ours, "shared_layer") == shapes_and_axes(bert_params, "layer_0")
    h, e, i, v, p = 36, 10, 37, 1000, 40
    layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
    embeddings = (v + p + 2) * e + 2 * e + e * h + h
    assert count(ours) == layer + embeddings + h * h + h
    # The factorized tables are E wide, with BERT's axis names.
    table = ours["embeddings"]["word_embeddings"]["embedding"]
    assert (table.value.shape, table.names) == ((1000, 10), ("vocab", "embed"))


def test_one_line_refusals(tmp_path):
    torch_model(tmp_path, "AlbertModel")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_groups": 2}))
    with pytest.raises(ValueError) as error:
        layouts.load_pretrained(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'config.json'}: num_hidden_groups 2 and inner_group_num 1: only 1 and 1 "
        "(one layer shared by all, as every released ALBERT) are supported"
    )
    with pytest.raises(ValueError, match="^scan_layers is true, but ALBERT's layers share one set"):
        tiny_config(scan_layers=True)
    # ALBERT's TF1 layout (google-research/albert's names) is tests/tf1_families_test.py's.
    assert registry.family_named("albert").tf1.CONFIG_FILE == "albert_config.json"


def sop_corpus(sentences_per_doc):
    """Documents of 3-token sentences, token values counting up: sentence k holds 3k .. 3k + 2."""
    from bert_jax.data.instances import TokenizedCorpus

    total = sum(sentences_per_doc)
    return TokenizedCorpus(
        tokens=np.arange(3 * total, dtype=np.int32),
        sentence_starts=np.arange(0, 3 * total + 1, 3, dtype=np.int64),
        document_starts=np.concatenate([[0], np.cumsum(sentences_per_doc)]).astype(np.int64),
    )


def test_sentence_order_pairs_are_albert_s():
    from bert_jax.data import instances

    # 400 documents of 2-5 sentences and 100 of one; long enough rows that nothing is truncated.
    sizes = [2 + k % 4 for k in range(400)] + [1] * 100
    corpus = sop_corpus(sizes)
    doc_of = np.repeat(np.arange(len(sizes)), np.asarray(sizes) * 3)
    specs = instances.create_instance_specs(
        corpus, 64, 0.0, np.random.default_rng(0), sentence_order=True
    )
    a_lo, a_hi, b_lo, b_hi, label = specs.T
    assert len(specs) == 500 and (a_hi > a_lo).all() and (b_hi > b_lo).all()
    single = np.asarray(sizes) == 1
    one = single[doc_of[a_lo]]
    # A one-sentence document: B from another document, label 1 (the original's random next).
    assert (label[one] == 1).all() and (doc_of[b_lo[one]] != doc_of[a_lo[one]]).all()
    # Two or more sentences: consecutive segments of one document, in order (0) or swapped (1).
    many = ~one
    assert (doc_of[b_lo[many]] == doc_of[a_lo[many]]).all()
    in_order, swapped = many & (label == 0), many & (label == 1)
    assert (a_hi[in_order] == b_lo[in_order]).all()
    assert (b_hi[swapped] == a_lo[swapped]).all()
    assert in_order.sum() + swapped.sum() == 400
    # Swapped half the time: 400 coin flips, 3 standard deviations.
    assert abs(swapped.sum() / 400 - 0.5) < 3 * np.sqrt(0.25 / 400)
    # Without sentence_order the same corpus gives BERT's pairs: no swaps, negatives from other documents.
    bert = instances.create_instance_specs(corpus, 64, 0.0, np.random.default_rng(0))
    negative = bert[:, 4] == 1
    assert (doc_of[bert[negative, 2]] != doc_of[bert[negative, 0]]).all()


def test_ngram_masking_rules_and_statistics():
    from bert_jax.data import masking

    assert np.allclose(masking.ngram_probabilities(3), [6 / 11, 3 / 11, 2 / 11])
    rng = np.random.default_rng(0)
    # One-piece words: a budget of 3 in 400 tokens. The first n-gram drawn is kept whole (n <= 3 fits), so a
    # row is one 3-gram with p(3) = 2/11 and three separate words with p(1)^2 = 36/121.
    ids = np.full((4000, 400), 7)
    ids[:, 0], ids[:, -1] = 2, 3
    out = masking.mask_tokens(
        ids, np.ones_like(ids), rng, max_predictions=3, masked_lm_prob=3 / 400,
        special_ids=[0, 1, 2, 3, 4], mask_id=4, vocab_size=1000, max_ngram=3,
    )  # fmt: skip
    gaps = np.diff(out["masked_lm_positions"], axis=1)
    assert (out["masked_lm_weights"].sum(1) == 3).all()
    assert abs(((gaps[:, 0] == 1) & (gaps[:, 1] == 1)).mean() - 2 / 11) < 0.02
    assert abs(((gaps[:, 0] > 1) & (gaps[:, 1] > 1)).mean() - 36 / 121) < 0.02
    # 80% [MASK], 10% random, 10% unchanged (all originals are 7).
    replaced = np.take_along_axis(out["input_ids"], out["masked_lm_positions"], axis=1)
    assert abs((replaced == 4).mean() - 0.8) < 0.01
    assert abs((replaced == 7).mean() - 0.1 - 0.1 / 1000) < 0.01

    # Whole words: pieces "a b c" form one word when b and c continue it; never [CLS]/[SEP]/padding.
    rng = np.random.default_rng(1)
    cont = np.zeros(1000, bool)
    cont[100:200] = True  # ids 100-199 continue a word
    row = np.array([2, 10, 150, 151, 11, 12, 160, 3, 13, 170, 14, 15, 3, 0, 0])
    ids = np.tile(row, (2000, 1))
    mask = (ids != 0).astype(np.int32)
    out = masking.mask_tokens(
        ids, mask, rng, max_predictions=4, masked_lm_prob=0.4, special_ids=[0, 1, 2, 3, 4],
        mask_id=4, vocab_size=1000, is_continuation=cont, max_ngram=3,
    )  # fmt: skip
    chosen = np.zeros(ids.shape, bool)
    valid = out["masked_lm_weights"] > 0
    rows = np.broadcast_to(np.arange(len(ids))[:, None], valid.shape)
    chosen[rows[valid], out["masked_lm_positions"][valid]] = True
    words = [[1, 2, 3], [4], [5, 6], [8, 9], [10], [11]]
    for word in words:
        assert (chosen[:, word].all(1) | ~chosen[:, word].any(1)).all(), word
    assert not chosen[:, [0, 7, 12, 13, 14]].any()
    # round(13 real tokens x 0.4) = 5 > 4: a budget of 4, never exceeded; short of it only when the words
    # left are all too long (e.g. [4], [10], [11] taken first leaves 1 for words of 2 and 3 pieces).
    assert valid.sum(1).max() == 4 and valid.sum(1).min() >= 3
    assert (valid.sum(1) == 4).mean() > 0.8
    # An n-gram runs across the [SEP]: words [5, 6] and [8, 9] masked together happens.
    assert (chosen[:, 6] & chosen[:, 8]).any()


def test_albert_word_rule():
    from bert_jax.data.tokenizer import load_tokenizer

    starts = {
        p: albert_vocab.is_word_start(p) for p in ("\u2581the", "the", ",", "é", "<pad>", "ab,")
    }
    assert starts == {
        "\u2581the": True,
        "the": False,
        ",": True,
        "é": True,
        "<pad>": True,
        "ab,": False,
    }
    tok = load_tokenizer(str(SPM))
    flags = albert_vocab.word_starts(tok)
    assert flags.shape == (1000,) and flags[[0, 1, 2, 3, 4]].all()
    pieces = [tok.id_to_token(i) for i in range(1000)]
    assert flags.sum() == sum(albert_vocab.is_word_start(p) for p in pieces[5:]) + 5


def test_albert_lamb_is_google_research_albert_s_update():
    import ml_collections

    from bert_jax import optim

    config = ml_collections.ConfigDict(
        dict(optimizer="albert_lamb", learning_rate=0.5, warmup_steps=0, num_train_steps=10,
             adam_b1=0.9, adam_b2=0.999, adam_epsilon=1e-6, weight_decay=0.01, max_grad_norm=0.0)
    )  # fmt: skip
    tx = optim.make_optimizer(config)
    w, b = np.array([[1.0, -2.0, 0.5], [0.3, 0.0, 1.5]]), np.array([0.1, -0.2, 0.3])
    g = {"dense": {"kernel": np.array([[0.2, 0.1, -0.3], [0.05, 0.4, 0.0]]), "bias": np.ones(3)}}
    params = {"dense": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}
    updates, _ = tx.update(jax.tree.map(jnp.asarray, g), tx.init(params), params)

    def lamb(p, grad, decay):
        # The original's first step: unbias-corrected moments, decay added, then the trust ratio.
        m, v = 0.1 * grad, 0.001 * grad**2
        update = m / (np.sqrt(v) + 1e-6) + (0.01 * p if decay else 0.0)
        ratio = np.linalg.norm(p) / np.linalg.norm(update) if decay else 1.0
        return -0.5 * ratio * update  # lr * (1 - 0 / 10)

    np.testing.assert_allclose(
        updates["dense"]["kernel"], lamb(w, g["dense"]["kernel"], True), rtol=1e-5
    )
    # A bias: no decay and no layer adaptation, as the original's exclude_from_weight_decay ("bias").
    np.testing.assert_allclose(
        updates["dense"]["bias"], lamb(b, g["dense"]["bias"], False), rtol=1e-5
    )


def test_recipes_are_the_papers_numbers():
    from bert_jax import main
    from bert_jax.configs import albert_base, albert_tiny

    c = albert_base.get_config()
    assert (c.family, c.objective, c.optimizer) == ("albert", "mlm_sop", "albert_lamb")
    assert (c.num_train_steps, c.global_batch_size, c.learning_rate, c.warmup_steps) == (
        125_000, 4096, 0.00176, 3125,
    )  # fmt: skip
    assert (c.adam_b2, c.adam_epsilon, c.weight_decay, c.max_grad_norm) == (0.999, 1e-6, 0.01, 1.0)
    assert (c.data.seq_length, c.data.max_predictions_per_seq, c.data.phase2_fraction) == (
        512,
        20,
        0.0,
    )
    assert (c.data.sentence_order, c.data.max_ngram, c.data.whole_word_mask) == (True, 3, True)
    config = registry.config_from_fields(dict(c.model), c.family)
    assert type(config) is albert.AlbertConfig
    assert (config.vocab_size, config.embedding_size, config.hidden_size, config.num_layers) == (
        30000, 128, 768, 12,
    )  # fmt: skip
    assert albert_base.get_config("xxlarge").model.hidden_size == 4096
    family = registry.family_named("albert")
    assert (family.objectives, family.tf1.CONFIG_FILE, registry.family_of(config).name) == (
        ("mlm_sop",),
        "albert_config.json",
        "albert",
    )
    # BERT's count with the factorized parts: the E -> H projection per token, the MLM head through E.
    from bert_jax.models import bert

    factorized = 512 * 128 * 768 + 20 * (768 * 128 + 128 * 30000) - 20 * (768 * 768 + 768 * 30000)
    assert (
        registry.flops_per_sequence(config, 512, 20)
        == bert.flops_per_sequence(config, 512, 20) + 6.0 * factorized
    )
    tiny = albert_tiny.get_config()
    assert tiny.vocab_file.endswith("albert_sample_spm.model") and tiny.model.embedding_size == 64
    assert main.resolve_config("albert_tiny").endswith("bert_jax/configs/albert_tiny.py")


def test_tiny_pretraining_learns(tmp_path):
    """The albert_tiny recipe's data path (SentencePiece, SOP pairs, n-gram masks), objective and optimizer,
    at a smaller size, for 40 steps: the loss falls."""
    from bert_jax import optim
    from bert_jax.configs import albert_tiny
    from bert_jax.data.loader import make_pretraining_loader

    c = albert_tiny.get_config()
    c.model.update(hidden_size=32, intermediate_size=64, embedding_size=16, vocab_size=1000)
    c.update(num_train_steps=40, warmup_steps=4, global_batch_size=16)
    c.data.seq_length = 32
    loader = make_pretraining_loader(
        c.data,
        global_batch_size=16,
        num_train_steps=40,
        vocab_file=c.vocab_file,
        do_lower_case=True,
    )
    batch = loader.batch(0)
    assert set(np.unique(batch["next_sentence_labels"])) == {0, 1}
    assert batch["masked_lm_weights"].sum() > 0 and (batch["input_ids"][:, 0] == 2).all()
    model = registry.build(registry.config_from_fields(dict(c.model), "albert"), "pretraining")
    objective = registry.objective("mlm_sop", model)
    tx = optim.make_optimizer(c)
    params = nn.unbox(registry.init_params(model, jax.random.key(0)))
    state = tx.init(params)

    @jax.jit
    def step(params, state, batch, rng):
        (loss, sums), grads = jax.value_and_grad(objective.loss, has_aux=True)(params, batch, rng)
        updates, state = tx.update(grads, state, params)
        return optim.optax.apply_updates(params, updates), state, loss, sums

    losses = []
    for s in range(40):
        batch = {k: jnp.asarray(v) for k, v in loader.batch(s).items()}
        params, state, loss, sums = step(params, state, batch, jax.random.key(s))
        losses.append(float(loss))
    summary = objective.summarize(jax.tree.map(float, sums))
    assert sorted(summary) == ["mlm_accuracy", "mlm_loss", "sop_accuracy", "sop_loss"]
    # ln(1000) + ln(2) = 7.6 at the start; 40 steps take off well over one nat.
    assert np.mean(losses[:5]) > 7.0 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses


def test_fine_tuning_weights_keep_the_factorized_width(tmp_path):
    """warm_start reads a family's own architecture fields (embedding_size), not only BERT's."""
    from bert_jax import warm_start

    torch_model(tmp_path, "AlbertForPreTraining", num_labels=2)
    weights = warm_start.from_path(
        tmp_path, heads=("bert", "classifier"), dtype="float32", param_dtype="float32"
    )
    assert type(weights.model_config) is albert.AlbertConfig
    assert (weights.model_config.embedding_size, weights.model_config.num_layers) == (10, 3)
    assert sorted(weights.params) == ["bert"]
    assert weights.params["bert"]["embeddings"]["word_embeddings"]["embedding"].shape == (1000, 10)


def test_saved_directory_carries_the_sentencepiece_tokenizer(tmp_path):
    torch_model(tmp_path / "hf", "AlbertModel")
    model, params, tok = layouts.load_pretrained(tmp_path / "hf")
    layouts.save_pretrained(tmp_path / "back", params, model.config, tokenizer=tok)
    assert (tmp_path / "back" / "spiece.model").read_bytes() == SPM.read_bytes()
    _, _, again = layouts.load_pretrained(tmp_path / "back")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    texts, pairs = (
        ["Zanashka wrote four letters.", "the otter", "Naïve CAFÉ, Ångström résumé"],
        ["to her brother", "in the fields", "Zoë"],
    )
    ours = again(texts, pairs)
    expected = theirs(texts, pairs, padding="longest", return_token_type_ids=True)
    np.testing.assert_array_equal(ours["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(ours["token_type_ids"], expected["token_type_ids"])
    assert ours["input_ids"][0, 0] == 2 and again.vocab_size == tok.vocab_size == 1000


@pytest.mark.parametrize("head", ["classification", "token"])
def test_task_heads_drop_out_at_classifier_dropout_prob(head):
    # The released ALBERTs train the encoder without dropout and the task heads at classifier_dropout_prob
    # (transformers' Albert*Classification heads): with the encoder's dropout off, only that rate moves the logits.
    ids, mask, types = ragged_batch()
    batch = dict(
        input_ids=jnp.asarray(ids),
        attention_mask=jnp.asarray(mask),
        token_type_ids=jnp.asarray(types),
    )

    def logits(rate, dropout_seed):
        config = tiny_config(
            hidden_dropout_prob=0.0, attention_dropout_prob=0.0, classifier_dropout_prob=rate
        )
        model = albert.build_model(config, head, num_labels=3)
        params = nn.unbox(model.init(jax.random.key(0), **batch)["params"])
        out = model.apply(
            {"params": params},
            **batch,
            deterministic=False,
            rngs={"dropout": jax.random.key(dropout_seed)},
        )
        return np.asarray(out["logits"])

    np.testing.assert_array_equal(logits(0.0, 1), logits(0.0, 2))
    assert np.abs(logits(0.5, 1) - logits(0.5, 2)).max() > 1e-3

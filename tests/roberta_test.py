"""RoBERTa: loading randomly initialised transformers models of every head with parity, saving back, the
family's numbering of positions, its byte-level BPE tokenizer, and the one-line errors."""

import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from bert_jax import layouts
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.models import registry, roberta

# Odd sizes: 3 heads of 12, a feed-forward width and vocabulary that match nothing by accident.
SIZES = dict(
    vocab_size=97,
    hidden_size=36,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=37,
    max_position_embeddings=40,
    # As the released checkpoints (transformers' RobertaConfig would default to 2).
    type_vocab_size=1,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)
# The ragged batch: three rows of 13, 8 and 4 real tokens, padded with <pad> = 1.
LENGTHS = (13, 8, 4)
HEADS = {
    "none": ("RobertaModel", ("last_hidden_state", "pooler_output")),
    "pretraining": ("RobertaForMaskedLM", ("logits",)),
    "classification": ("RobertaForSequenceClassification", ("logits",)),
    "span": ("RobertaForQuestionAnswering", ("start_logits", "end_logits")),
    "token": ("RobertaForTokenClassification", ("logits",)),
}


def write_bpe_files(directory):
    """A 97-token byte-level BPE: fairseq's 4 specials, the space marker, 89 ASCII bytes, 2 merges, <mask>."""
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "\u0120"]
    tokens += [chr(c) for c in range(ord("!"), ord("!") + 89)] + ["\u0120t", "he", "<mask>"]
    assert len(tokens) == 97
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n\u0120 t\nh e\n")
    # As released directories say: the longest input the positions allow (40 - pad_token_id - 1).
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 38}))


def ragged_batch(seed=0, length=13):
    rng = np.random.default_rng(seed)
    ids = np.full((len(LENGTHS), length), 1, np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        ids[row, :n] = np.concatenate([[0], rng.integers(4, 96, n - 2), [2]])
        mask[row, :n] = 1
    return ids, mask


def torch_model(tmp_path, class_name, num_labels=3, seed=0):
    """A randomly initialised transformers model (every weight perturbed off its init) saved to tmp_path."""
    torch.manual_seed(seed)
    config = transformers.RobertaConfig(**SIZES, num_labels=num_labels)
    model = getattr(transformers, class_name)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    write_bpe_files(tmp_path)
    return model


def run_torch(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    return {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def run_ours(model, params, ids, mask):
    ids = jnp.asarray(ids, jnp.int32)
    out = model.apply({"params": params}, ids, jnp.zeros_like(ids), jnp.asarray(mask, jnp.int32))
    return {k: np.asarray(v) for k, v in out.items() if not isinstance(v, tuple)}


def assert_close(ours, theirs, names, mask):
    for name in names:
        a, b = ours[name], theirs[name]
        assert a.shape == b.shape, name
        if a.ndim >= 2 and a.shape[:2] == mask.shape:  # per-token outputs: pads are don't-cares
            a, b = a[mask > 0], b[mask > 0]
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("head", list(HEADS))
def test_transformers_heads_load_with_parity_and_save_back(tmp_path, head):
    class_name, names = HEADS[head]
    num_labels = {"token": 5, "span": 2}.get(head, 3)
    theirs_model = torch_model(tmp_path / "hf", class_name, num_labels)
    ids, mask = ragged_batch()
    theirs = run_torch(theirs_model, ids, mask)
    model, params, tok = layouts.load_pretrained(tmp_path / "hf", head=head)
    assert type(model.config) is roberta.RobertaConfig
    assert (model.config.pad_token_id, model.config.type_vocab_size) == (1, 1)
    assert tok.vocab_size == 97 and (tok.cls_id, tok.pad_id, tok.sep_id, tok.mask_id) == (
        0,
        1,
        2,
        96,
    )
    assert_close(run_ours(model, params, ids, mask), theirs, names, mask)

    # Ours -> a transformers directory -> transformers reads it and gives the same outputs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # saved without tokenizer files
        layouts.save_pretrained(tmp_path / "back", params, model.config, head)
    saved = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (saved["model_type"], saved["architectures"], saved["pad_token_id"]) == (
        "roberta",
        [class_name],
        1,
    )
    again = getattr(transformers, class_name).from_pretrained(tmp_path / "back").eval()
    assert_close(run_torch(again, ids, mask), theirs, names, mask)


def test_multiple_choice_scores_each_choice_as_one_row(tmp_path):
    theirs_model = torch_model(tmp_path / "hf", "RobertaForMultipleChoice", num_labels=1)
    ids, mask = ragged_batch(seed=1)  # 3 rows = 1 question x 3 choices
    with torch.no_grad():
        theirs = theirs_model(
            input_ids=torch.tensor(ids[None]), attention_mask=torch.tensor(mask[None])
        ).logits.numpy()
    model, params, _ = layouts.load_pretrained(tmp_path / "hf", head="multiple_choice")
    ours = run_ours(model, params, ids, mask)["logits"]
    assert ours.shape == (3, 1) and theirs.shape == (1, 3)
    np.testing.assert_allclose(ours.reshape(1, 3), theirs, atol=1e-5, rtol=1e-5)
    layouts.save_pretrained(tmp_path / "back", params, model.config, "multiple_choice")
    again = transformers.RobertaForMultipleChoice.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        back = again(input_ids=torch.tensor(ids[None]), attention_mask=torch.tensor(mask[None]))
    np.testing.assert_allclose(back.logits.numpy(), theirs, atol=1e-5, rtol=1e-5)


def test_positions_count_past_the_padding_id():
    ids = jnp.array([[0, 5, 6, 2, 1, 1], [0, 1, 6, 2, 1, 1]])
    np.testing.assert_array_equal(
        roberta.position_ids(ids, 1), [[2, 3, 4, 5, 1, 1], [2, 1, 3, 4, 1, 1]]
    )
    theirs = transformers.models.roberta.modeling_roberta.RobertaEmbeddings
    expected = theirs.create_position_ids_from_input_ids(torch.tensor(np.asarray(ids)), 1)
    np.testing.assert_array_equal(roberta.position_ids(ids, 1), expected.numpy())


def test_registry_entry():
    family = registry.family_named("roberta")
    assert family.objectives == ("mlm",) and family.tf1 is None
    config = registry.config_from_fields(dict(family.presets["base"]), "roberta")
    assert registry.family_of(config).name == "roberta"
    assert registry.family_of(registry.config_from_fields({})).name == "bert"
    assert (config.max_position_embeddings, config.layer_norm_eps, config.max_length) == (
        514,
        1e-5,
        512,
    )
    # BERT's count less the pooler and NSP head: 6 (h^2 + 2h) FLOPs.
    from bert_jax.models import bert

    bert_count = bert.flops_per_sequence(config, 512, 77)
    assert bert_count - registry.flops_per_sequence(config, 512, 77) == 6.0 * (768**2 + 2 * 768)


def test_tokenizer_matches_transformers_roberta_tokenizer(tmp_path):
    write_bpe_files(tmp_path)
    ours = tokenizer_lib.load_tokenizer(tmp_path)
    theirs = transformers.RobertaTokenizer.from_pretrained(tmp_path)
    texts, pairs = ["the cat sat", "hello there"], ["on the mat", "it"]
    batch = ours(texts, pairs)
    expected = theirs(texts, pairs, padding="longest")
    np.testing.assert_array_equal(batch["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], expected["attention_mask"])
    assert batch["token_type_ids"].max() == 0
    # "t" is 5 + ord("t") - ord("!"); "Ġt" and "he" are the two merges.
    assert ours.encode("the") == theirs.encode("the", add_special_tokens=False) == [88, 95]
    assert ours.encode(" the") == [94, 95]
    # "Ġt" starts a word; "he" continues one.
    assert not ours.is_continuation[94] and ours.is_continuation[95]


def test_unsupported_family_is_one_line(tmp_path):
    torch_model(tmp_path, "RobertaModel")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "deberta"}))
    with pytest.raises(ValueError) as error:
        layouts.load_pretrained(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"{tmp_path / 'config.json'}: model_type is 'deberta', not 'albert', 'bert', 'electra' or 'roberta' "
        "(the model families bert_jax supports)"
    )


def test_bpe_without_merges_is_one_line(tmp_path):
    write_bpe_files(tmp_path)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError) as error:
        tokenizer_lib.load_tokenizer(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'merges.txt'}: missing (a byte-level BPE needs vocab.json and merges.txt)"
    )


def test_no_tf1_layout(tmp_path):
    config = roberta.RobertaConfig(**roberta.PRESETS["tiny"], vocab_size=97)
    with pytest.raises(ValueError, match="^roberta has no TF1 checkpoint layout"):
        layouts.save_tf1(tmp_path, {}, config, "none", None)


def test_mlm_objective_is_the_mean_masked_cross_entropy():
    import jax

    config = roberta.RobertaConfig(
        vocab_size=97, hidden_size=36, num_layers=2, num_heads=3, intermediate_size=37,
        max_position_embeddings=40,
    )  # fmt: skip
    model = registry.build(config, "pretraining")
    params = registry.init_params(model, jax.random.key(0))
    ids, mask = ragged_batch(seed=2)
    batch = {
        "input_ids": jnp.asarray(ids, jnp.int32),
        "attention_mask": jnp.asarray(mask, jnp.int32),
        "masked_lm_positions": jnp.array([[1, 5, 9], [2, 3, 0], [1, 0, 0]]),
        "masked_lm_ids": jnp.array([[7, 8, 9], [10, 11, 0], [12, 0, 0]]),
        "masked_lm_weights": jnp.array([[1.0, 1, 1], [1, 1, 0], [1, 0, 0]]),
    }
    objective = registry.objective("mlm", model)
    loss, sums = objective.loss_sums(params, batch, None, deterministic=True)
    logits = model.apply({"params": params}, batch["input_ids"], None, batch["attention_mask"])[
        "logits"
    ]
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    picked = [(0, 1, 7), (0, 5, 8), (0, 9, 9), (1, 2, 10), (1, 3, 11), (2, 1, 12)]
    expected = -np.mean([logp[b, p, t] for b, p, t in picked])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(sums["mlm_weight_sum"]) == 6.0
    summary = objective.summarize({k: float(v) for k, v in sums.items()})
    assert sorted(summary) == ["mlm_accuracy", "mlm_loss"]
    np.testing.assert_allclose(summary["mlm_loss"], expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"^objective 'mlm_nsp' is not one of \['mlm'\]"):
        registry.objective("mlm_nsp", model)


def test_recipes_are_the_papers_numbers():
    from bert_jax.configs import roberta_base, roberta_tiny

    c = roberta_base.get_config()
    assert (c.family, c.objective, c.optimizer) == ("roberta", "mlm", "adamw")
    assert (c.num_train_steps, c.global_batch_size, c.learning_rate, c.warmup_steps) == (
        500_000, 8192, 6e-4, 24_000,
    )  # fmt: skip
    assert (c.adam_b1, c.adam_b2, c.adam_epsilon, c.weight_decay, c.max_grad_norm) == (
        0.9, 0.98, 1e-6, 0.01, 0.0,
    )  # fmt: skip
    assert c.global_batch_size % c.grad_accum_steps == 0
    assert (c.data.seq_length, c.data.max_predictions_per_seq, c.data.masking) == (
        512,
        77,
        "dynamic",
    )
    large = roberta_base.get_config("large")
    assert (large.learning_rate, large.warmup_steps, large.model.num_layers) == (4e-4, 30_000, 24)
    # The model fields are RobertaConfig's, through the registry by the recipe's family.
    config = registry.config_from_fields(dict(c.model), c.family)
    assert type(config) is roberta.RobertaConfig and config.max_length == 512
    # BERT's NSP field is no RoBERTa recipe field: setting it is the locked config's error.
    tiny = roberta_tiny.get_config()
    tiny.lock()
    with pytest.raises(AttributeError, match="short_seq_prob"):
        tiny.data.short_seq_prob = 0.1
    # And a RoBERTa model field on BERT is the registry's one-line error.
    with pytest.raises(ValueError, match=r"^unknown model config keys \['pad_token_id'\]"):
        registry.config_from_fields({"pad_token_id": 1}, "bert")


def test_saved_directory_carries_the_bpe_tokenizer(tmp_path):
    torch_model(tmp_path / "hf", "RobertaModel")
    model, params, tok = layouts.load_pretrained(tmp_path / "hf")
    layouts.save_pretrained(tmp_path / "back", params, model.config, tokenizer=tok)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()
    _, _, again = layouts.load_pretrained(tmp_path / "back")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert type(again) is tokenizer_lib.ByteLevelBPETokenizer and again.model_max_length == 38
    text = " the hat"
    assert again.encode(text) == tok.encode(text) == theirs.encode(text, add_special_tokens=False)
    assert again(text)["input_ids"].tolist() == [theirs(text)["input_ids"]]


def test_full_sentences_rows_cross_documents_with_a_separator():
    from bert_jax.data import full_sentences
    from bert_jax.data.instances import TokenizedCorpus

    # Documents of sentences [3, 2], [4], [1, 6], [9] tokens; token values 10, 11, ... in order.
    lengths, per_doc = [3, 2, 4, 1, 6, 9], [2, 1, 2, 1]
    corpus = TokenizedCorpus(
        tokens=np.arange(10, 10 + sum(lengths), dtype=np.int32),
        sentence_starts=np.concatenate([[0], np.cumsum(lengths)]),
        document_starts=np.concatenate([[0], np.cumsum(per_doc)]),
    )
    out = full_sentences.full_sentences(corpus, 8, cls_id=0, sep_id=2, pad_id=1)
    np.testing.assert_array_equal(
        out["input_ids"],
        [
            # doc 0 fills the row but for a separator, which the row's own </s> replaces
            [0, 10, 11, 12, 13, 14, 2, 1],
            # doc 1, the separator, doc 2's first sentence
            [0, 15, 16, 17, 18, 2, 19, 2],
            # doc 2's second sentence, whole
            [0, 20, 21, 22, 23, 24, 25, 2],
            # doc 3's one sentence, longer than a row: cut to fit
            [0, 26, 27, 28, 29, 30, 31, 2],
        ],
    )
    np.testing.assert_array_equal(out["attention_mask"].sum(1), [7, 8, 8, 8])
    assert out["token_type_ids"].max() == 0 and out["input_ids"].dtype == np.int32
    with pytest.raises(ValueError, match="^seq_length 2 leaves no room between <s> and </s>$"):
        full_sentences.row_spans(corpus, 2)


def test_transformers_class_per_family_and_head():
    bert_config = registry.config_from_fields({})
    roberta_config = roberta.RobertaConfig()
    assert layouts.architecture(bert_config, "pretraining") == "BertForPreTraining"
    assert layouts.architecture(roberta_config, "pretraining") == "RobertaForMaskedLM"
    assert layouts.architecture(roberta_config, "multiple_choice") == "RobertaForMultipleChoice"
    with pytest.raises(
        ValueError, match="^head 'multiple_choice' has no transformers class for bert$"
    ):
        layouts.architecture(bert_config, "multiple_choice")


def test_convert_to_a_bert_jax_checkpoint_keeps_the_family(tmp_path):
    from bert_jax import export

    torch_model(tmp_path / "hf", "RobertaModel")
    ids, mask = ragged_batch(seed=3)
    model, params, _ = layouts.load_pretrained(tmp_path / "hf")
    difference = export.convert_checkpoint(tmp_path / "hf", tmp_path / "ours", "bert_jax")
    assert difference <= 1e-6
    again, params_again, tok = layouts.load_pretrained(tmp_path / "ours")
    assert type(again.config) is roberta.RobertaConfig
    assert type(tok) is tokenizer_lib.ByteLevelBPETokenizer
    ours = run_ours(model, params, ids, mask)
    assert_close(run_ours(again, params_again, ids, mask), ours, ("last_hidden_state",), mask)

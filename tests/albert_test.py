"""ALBERT: loading randomly initialised transformers models of every head with parity and saving back, the shared
layer really shared, the one-line refusals, the SOP pairs and n-gram masking of google-research/albert, ALBERT's
LAMB, the recipes, and a short tiny pretraining run whose loss falls."""

import json
import shutil
import warnings

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from bert_jax import layouts
from bert_jax.data import corpus
from bert_jax.models import albert

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

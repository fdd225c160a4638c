"""RoBERTa pretraining: the bundled byte-level BPE, fairseq's masking rules and statistics, the FULL-SENTENCES loader
(step-pure, no NSP, one token type, its refusals) and roberta_tiny end to end (the loss falls; a resumed run ends
bitwise equal to an uninterrupted one)."""

import json
import shutil

import jax
import numpy as np
import pytest

from bert_jax import pretrain, train_lib
from bert_jax.assets import make_sample_bpe
from bert_jax.configs import roberta_base, roberta_tiny
from bert_jax.data import corpus, fairseq_replay, masking
from bert_jax.data import loader as loader_lib
from bert_jax.data.tokenizer import ByteLevelBPETokenizer

# fairseq's dictionary order, which the bundled BPE keeps: <s>, <pad>, </s>, <unk>, then <mask>.
BOS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 4
# RoBERTa-Base with its MLM head: transformers' RobertaForMaskedLM(RobertaConfig(type_vocab_size=1,
# max_position_embeddings=514)), the released sizes, has 124,697,433 parameters (counted with transformers 5).
EXPECTED_BASE_PARAMS = 124_697_433


def test_bundled_bpe_is_what_its_script_makes(tmp_path):
    """Retraining with make_sample_bpe gives the shipped files byte for byte; they load with fairseq's specials."""
    made = make_sample_bpe.make(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (corpus.SAMPLE_BPE / name).read_bytes()
    tok = ByteLevelBPETokenizer(corpus.SAMPLE_BPE / "vocab.json", corpus.SAMPLE_BPE / "merges.txt")
    assert tok.vocab_size == made.vocab_size == 2048
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id) == (
        BOS,
        PAD,
        EOS,
        UNK,
        MASK,
    )
    assert tok.decode(tok.encode("The loom of Miost was built by Zanmi.")) == (
        "The loom of Miost was built by Zanmi."
    )
    assert corpus.sample_vocab("roberta") == corpus.SAMPLE_BPE
    assert corpus.sample_vocab("bert") == corpus.SAMPLE_VOCAB


def _rows(n, length, vocab, rng):
    """`n` unmasked rows `<s> tokens </s>` of random real lengths in [4, length], padded with <pad>."""
    sizes = rng.integers(4, length + 1, n)
    ids = rng.integers(MASK + 1, vocab, (n, length))
    real = np.arange(length)[None, :] < sizes[:, None]
    ids[:, 0] = BOS
    ids[np.arange(n), sizes - 1] = EOS
    ids = np.where(real, ids, PAD)
    return ids, real.astype(np.int32), sizes


def test_fairseq_masking_rules_and_statistics():
    """The loader's RoBERTa masks (fairseq_replay, one seed per block) against fairseq's MaskTokensDataset rules
    (exactly) and rates (within 4-5 sigma); tests/roberta_fairseq_test.py has fairseq's own output."""
    rng = np.random.default_rng(0)
    n, length, vocab = 6000, 64, 60
    ids, attention, sizes = _rows(n, length, vocab, rng)
    options = dict(max_predictions=10, vocab_size=vocab, mask_id=MASK, pad_id=PAD)
    out = fairseq_replay.mask_rows(ids, attention, 1, 1, range(n), **options)
    pos, tgt, w = out["masked_lm_positions"], out["masked_lm_ids"], out["masked_lm_weights"]
    assert pos.shape == tgt.shape == w.shape == (n, 10) and w.dtype == np.float32
    valid = w > 0
    # The count is int(0.15 * sz + u): floor or floor + 1 of 0.15 * sz (exactly it when an integer), never more.
    count = valid.sum(1)
    low = np.floor(0.15 * sizes).astype(int)
    assert np.all((count == low) | (count == low + 1))
    assert np.all(count[sizes == 20] == 3)  # 0.15 * 20 = 3: no rounding
    # Probabilistic rounding: on average exactly 15% of the real tokens (the sum's sd is < sqrt(n) / 2 = 39).
    assert abs(count.sum() - 0.15 * sizes.sum()) < 4 * 39
    # Valid slots first, positions increasing, inside the row, never padding; targets are the original ids.
    assert np.all(valid[:, :-1] >= valid[:, 1:])
    assert np.all(np.where(valid[:, 1:] & valid[:, :-1], np.diff(pos, axis=1) > 0, True))
    assert np.all(pos[valid] < sizes[np.nonzero(valid)[0]])
    assert np.all(pos[~valid] == 0) and np.all(tgt[~valid] == 0)
    rows = np.broadcast_to(np.arange(n)[:, None], pos.shape)
    np.testing.assert_array_equal(tgt[valid], ids[rows[valid], pos[valid]])
    # Only predicted positions change.
    changed = out["input_ids"] != ids
    predicted = np.zeros_like(changed)
    predicted[rows[valid], pos[valid]] = True
    assert not np.any(changed & ~predicted)
    # fairseq excludes no special from masking: <s> (position 0) is predicted at the mean rate of any position.
    rate = (pos[valid] == 0).sum() / n
    expected = np.mean(count / sizes)
    assert abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    assert (tgt[valid] == EOS).sum() > 0.5 * expected * n  # </s> (the row's last real token) too
    # 80% <mask>, 10% kept, 10% random (independent per position); random tokens avoid fairseq's 4 specials.
    now = out["input_ids"][rows[valid], pos[valid]]
    before = tgt[valid]
    total = valid.sum()
    random = (now != MASK) & (now != before)
    # A random draw is one of the vocab - 4 = 56 allowed ids: the original 1 time in 56, <mask> itself 1 in 56.
    allowed = vocab - 4
    fractions = {
        "mask": ((now == MASK).mean(), 0.8 + 0.1 / allowed),
        "kept": ((now == before).mean(), 0.1 + 0.1 / allowed),
        "random": (random.mean(), 0.1 * (1 - 2 / allowed)),
    }
    for name, (got, want) in fractions.items():
        assert abs(got - want) < 5 * np.sqrt(want * (1 - want) / total), (name, got, want)
    drawn = now[random]
    assert drawn.min() > UNK and drawn.max() < vocab
    # Uniform over the allowed ids: every one drawn, none more than 2x another's expectation.
    counts = np.bincount(drawn, minlength=vocab)[MASK + 1 :]
    assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()
    # The largest count fairseq can draw is the cap's floor; a smaller cap is one line.
    assert [masking.fairseq_max_predictions(L) for L in (512, 128, 64, 20)] == [77, 20, 10, 3]
    with pytest.raises(ValueError, match=r"^max_predictions 9 < 10, the most fairseq's masking"):
        fairseq_replay.mask_rows(
            ids[:2], attention[:2], 1, 1, [0, 1], **{**options, "max_predictions": 9}
        )


def _data(**overrides):
    config = roberta_tiny.get_config()
    config.data.update({"seq_length": 64, "max_predictions_per_seq": 10, **overrides})
    return config.data


def test_full_sentences_loader_is_step_pure_without_nsp():
    """The roberta data path: <s> ... </s> rows of the bundled BPE, one token type, no NSP labels, fairseq masks;
    a fresh loader gives the same batch at any step; packing, instance files and whole-word masks are refused."""
    make = lambda: loader_lib.make_pretraining_loader(
        _data(), global_batch_size=16, num_train_steps=100, family="roberta"
    )
    loader = make()
    assert loader.tokenizer.vocab_size == 2048 and loader.tokenizer.mask_id == MASK
    batch = loader.batch(7)
    assert sorted(batch) == [
        "attention_mask", "input_ids", "masked_lm_ids", "masked_lm_positions", "masked_lm_weights",
        "token_type_ids",
    ]  # fmt: skip
    assert batch["input_ids"].shape == (16, 64) and not batch["token_type_ids"].any()
    original = masking.unmask(batch)
    lengths = batch["attention_mask"].sum(1)
    assert np.all(original[:, 0] == BOS)
    assert np.all(original[np.arange(16), lengths - 1] == EOS)
    # FULL-SENTENCES rows are nearly full: whole sentences until the next one does not fit.
    assert lengths.mean() > 0.8 * 64
    again = make().batch(7)
    for key in batch:
        np.testing.assert_array_equal(batch[key], again[key])
    assert not np.array_equal(loader.batch(8)["input_ids"], batch["input_ids"])
    # The loader's data state names the bundled BPE's content (a changed vocab is refused on resume).
    assert [k for k in loader.fingerprint if k.startswith("vocab")] == [
        "vocab bert_jax/assets/sample_bpe"
    ]
    for field, value, message in [
        (
            "packing",
            True,
            r"^data.packing=True: the roberta family's FULL-SENTENCES rows are already full",
        ),
        ("source", "instances", r"^data.source='instances': the roberta family reads text or TFDS"),
        ("whole_word_mask", True, r"^data.whole_word_mask=True: RoBERTa's fairseq masking"),
        (
            "max_predictions_per_seq",
            9,
            r"^data.max_predictions_per_seq=9: fairseq's masking predicts up to 10",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            loader_lib.make_pretraining_loader(
                _data(**{field: value}), global_batch_size=16, num_train_steps=10, family="roberta"
            )


def _tiny(**overrides):
    config = roberta_tiny.get_config()
    config.model.update(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    config.data.update(seq_length=64, max_predictions_per_seq=10)
    config.update(
        num_train_steps=20, global_batch_size=16, learning_rate=5e-3, warmup_steps=2,
        log_every_steps=1, eval_every_steps=10, eval_batches=1, checkpoint_every_steps=10,
        async_checkpoints=False, compilation_cache_dir="", **overrides,
    )  # fmt: skip
    config.lock()
    return config


def _metrics(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_roberta_tiny_learns_and_resumes_bitwise(tmp_path):
    """roberta_tiny shrunk (2 layers, hidden 32, length 64, 20 steps): the MLM loss falls, held-out MLM accuracy
    is logged (no NSP), the workdir keeps the BPE, and a run resumed from step 10 ends bitwise equal."""
    full = jax.device_get(pretrain.run(_tiny(), str(tmp_path / "a")))
    records = _metrics(tmp_path / "a")
    loss = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    assert sorted(loss) == list(range(1, 21))
    assert loss[1] > 7.0  # ~ln(2048) = 7.6: a uniform guess
    assert np.mean([loss[s] for s in range(16, 21)]) < loss[1] - 1.0
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in evals] == [10, 20]
    assert all(set(r) >= {"eval/mlm_accuracy", "eval/mlm_loss"} for r in evals)
    assert not any(k.startswith(("train/nsp", "eval/nsp")) for r in records for k in r)
    for name in ("vocab.json", "merges.txt"):
        saved = tmp_path / "a" / "tokenizer" / name
        assert saved.read_bytes() == (corpus.SAMPLE_BPE / name).read_bytes()
    # Resume: the same run with its step-20 checkpoint removed continues from step 10.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "20")
    resumed = jax.device_get(pretrain.run(_tiny(), str(tmp_path / "b")))
    assert int(resumed.step) == int(full.step) == 20
    same = jax.tree.map(np.array_equal, full.params, resumed.params)
    assert all(jax.tree.leaves(same))
    same_opt = jax.tree.map(np.array_equal, full.opt_state, resumed.opt_state)
    assert all(jax.tree.leaves(same_opt))


def test_roberta_base_builds_its_data_path():
    """roberta_base runs (no longer a refused base): its data path builds at 512 tokens with the bundled BPE,
    77 predictions (fairseq's most at 512), and its model config validates against that tokenizer."""
    from bert_jax import main, program
    from bert_jax.configs import BASES

    assert "roberta_base" not in BASES and "roberta_tiny" not in BASES
    assert main.resolve_config("roberta_base").endswith("configs/roberta_base.py")
    config = roberta_base.get_config()
    assert config.vocab_file == "" and config.family == "roberta"
    loader = loader_lib.make_pretraining_loader(
        config.data, global_batch_size=8, num_train_steps=config.num_train_steps, family="roberta"
    )
    batch = loader.batch(0)
    assert batch["input_ids"].shape == (8, 512) and batch["masked_lm_positions"].shape == (8, 77)
    # The program the entry point builds (abstract: shapes and shardings, nothing compiled or allocated).
    mesh = train_lib.make_mesh(
        config.mesh_shape, {"global_batch_size": config.global_batch_size}, config.grad_accum_steps
    )
    built = program.build(config, mesh, loader.tokenizer.vocab_size)
    model = built.model_config
    assert (model.vocab_size, model.hidden_size, model.num_layers) == (50265, 768, 12)
    assert type(built.objective).__name__ == "Mlm" and [p.seq_length for p in built.phases] == [512]
    params = sum(x.size for x in jax.tree.leaves(built.abstract.params))
    assert params == EXPECTED_BASE_PARAMS

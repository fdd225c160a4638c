"""Getting a model out: the conversion command in every direction (checked against transformers and the
original TF1 outputs), bert_jax workdirs loaded with all their heads, tokenizer files, labels, and errors."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import bert_jax
from bert_jax import checkpoint, convert, export, optim, pretrain, tf_checkpoint
from bert_jax.configs import glue as glue_config
from bert_jax.data import glue
from bert_jax.data.corpus import SAMPLE_VOCAB
from bert_jax.models.bert import BertConfig, build_model, init_params

REPO = Path(pretrain.__file__).parents[1]
FIXTURE = REPO / "tests" / "testdata" / "tf1_uncased_L-2_H-36_A-3"
ORIGINAL = np.load(FIXTURE / "outputs.npz")
TEXTS = ["the first of his new one was not there.", "SHE HAS BEEN THERE, with her two!"]


def torch_run(model, **inputs):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in inputs.items()})


def test_tf1_to_transformers_gives_the_original_outputs(tmp_path, capsys):
    out = tmp_path / "hf"
    convert.run([f"--from={FIXTURE}", f"--to={out}", "--format=transformers"])
    printed = capsys.readouterr().out
    assert "vs transformers BertForPreTraining.from_pretrained(OUT)" in printed
    assert float(printed.split("max |difference| ")[1].split()[0]) < 1e-5
    # transformers alone, on the written directory, reproduces the original TF1 graph's outputs.
    reference = transformers.BertForPreTraining.from_pretrained(out).eval()
    theirs = torch_run(
        reference,
        input_ids=ORIGINAL["input_ids"],
        token_type_ids=ORIGINAL["segment_ids"],
        attention_mask=ORIGINAL["input_mask"],
    )
    positions = ORIGINAL["masked_lm_positions"]
    mlm = np.take_along_axis(theirs.prediction_logits.numpy(), positions[..., None], axis=1)
    np.testing.assert_allclose(mlm.reshape(-1, 99), ORIGINAL["mlm_logits"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        theirs.seq_relationship_logits.numpy(), ORIGINAL["nsp_logits"], rtol=0, atol=1e-5
    )
    # The tokenizer files: AutoTokenizer lower-cases like the original and gives bert_jax's ids.
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True
    auto = transformers.AutoTokenizer.from_pretrained(out)
    _, _, ours = bert_jax.load_pretrained(out)  # load_pretrained reads its own output
    assert auto.vocab_size == ours.vocab_size == 95  # the fixture vocab is shorter than its 99 rows
    for text in TEXTS:
        assert auto(text)["input_ids"] == ours(text)["input_ids"][0].tolist()
    assert len(set(auto(TEXTS[1])["input_ids"])) > 4  # real words, not all [UNK]


def hf_classifier(directory):
    """A random 3-label BertForSequenceClassification with named labels, saved by transformers."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TEXTS[0].replace(".", "").split(), "."]
    config = transformers.BertConfig(
        vocab_size=len(words) + 3, hidden_size=20, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=28, max_position_embeddings=30, num_labels=3,
        id2label={0: "contradiction", 1: "entailment", 2: "neutral"},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    return model


def test_transformers_to_bert_jax_to_transformers_is_bitwise_exact(tmp_path):
    hf_classifier(tmp_path / "hf")
    export.convert_checkpoint(tmp_path / "hf", tmp_path / "bj", "bert_jax")
    export.convert_checkpoint(tmp_path / "bj", tmp_path / "back", "transformers")
    before, after = (
        load_file(tmp_path / "hf" / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    assert sorted(after) == sorted(k for k in before if not k.endswith("position_ids"))
    for name, value in after.items():
        assert value.dtype == before[name].dtype and value.tobytes() == before[name].tobytes(), name
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["id2label"] == {"0": "contradiction", "1": "entailment", "2": "neutral"}
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "back")
    assert model.num_labels == 3 and model.config.id2label[2] == "neutral"


def tiny_pretraining_run(workdir):
    """Two real steps of pretraining on the bundled corpus, with a tiny model."""
    from bert_jax.configs import bert_tiny

    config = bert_tiny.get_config()
    config.model.update(
        hidden_size=24, num_heads=2, intermediate_size=40, max_position_embeddings=32
    )
    config.data.update(seq_length=32, max_predictions_per_seq=5, phase2_seq_length=32)
    config.data.phase2_max_predictions_per_seq = 5
    config.update(
        num_train_steps=2, global_batch_size=8, warmup_steps=1, eval_every_steps=0,
        checkpoint_every_steps=2, async_checkpoints=False, log_every_steps=1,
    )  # fmt: skip
    pretrain.run(config, str(workdir))


@pytest.mark.slow
def test_pretraining_workdir_loads_with_its_heads_and_exports_to_transformers(tmp_path):
    tiny_pretraining_run(tmp_path / "run")
    model, params, tokenizer = bert_jax.load_pretrained(tmp_path / "run", head="pretraining")
    assert set(params) == {"bert", "mlm", "nsp"}
    step, stored, _ = checkpoint.restore_params(str(tmp_path / "run" / "checkpoints"))
    assert step == 2
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(stored), strict=True):
        np.testing.assert_array_equal(got, want)  # the trained weights, all heads

    out = tmp_path / "hf"
    export.convert_checkpoint(tmp_path / "run", out, "transformers")
    reference = transformers.BertForPreTraining.from_pretrained(out).eval()
    batch = tokenizer(TEXTS)
    ours = model.apply({"params": params}, **batch)
    theirs = torch_run(reference, **batch)
    for key in ("prediction_logits", "seq_relationship_logits"):
        np.testing.assert_allclose(ours[key], theirs[key].numpy(), rtol=0, atol=2e-5)
    auto = transformers.AutoTokenizer.from_pretrained(out)
    assert auto(TEXTS)["input_ids"] == [r[m > 0].tolist() for r, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)]  # fmt: skip
    assert (out / "vocab.txt").read_text().split() == SAMPLE_VOCAB.read_text().split()

    # And out to Google's layout, with the original variable names the original scripts restore.
    export.convert_checkpoint(tmp_path / "run", tmp_path / "tf1", "tf1")
    bundle = tf_checkpoint.Bundle(str(tmp_path / "tf1"))
    assert len(bundle.names) == 16 * 2 + 5 + 2 + 4 + 1 + 2  # layers, embeddings, pooler, MLM, NSP
    np.testing.assert_array_equal(
        bundle.read("cls/seq_relationship/output_weights"), np.asarray(params["nsp"]["kernel"]).T
    )


def fine_tuning_workdir(workdir, task="mnli"):
    """A workdir as fine-tuning leaves it: the TrainState and the stored config finetune.py writes."""
    labels = glue.TASKS[task].num_labels
    config = BertConfig(vocab_size=len(SAMPLE_VOCAB.read_text().split()), hidden_size=24,
                        num_layers=1, num_heads=2, intermediate_size=40, max_position_embeddings=64)  # fmt: skip
    model = build_model(config, "classification", labels)
    # As finetune.py stores it: the run's config, the model, the tokenizer and the label count.
    run = {
        **glue_config.get_config("tiny").to_dict(),
        "task": task,
        "num_train_steps": 10,
        "warmup_steps": 1,
    }
    params = nn.unbox(init_params(model, jax.random.key(5)))
    state = optim.TrainState.create(params, optim.make_optimizer(ml_collections.ConfigDict(run)))
    stored = {
        **run, "model": dataclasses.asdict(config),
        "tokenizer": {"path": str(SAMPLE_VOCAB), "do_lower_case": True}, "num_labels": labels,
    }  # fmt: skip
    writer = checkpoint.Checkpointer(
        str(workdir / "checkpoints"), keep=1, save_interval_steps=1, async_save=False
    )
    writer.save(3, state, data_state={}, config=stored, force=True)
    writer.close()
    return model, params


def test_fine_tuning_workdir_exports_with_its_labels(tmp_path):
    model, params = fine_tuning_workdir(tmp_path / "ft")
    _, loaded, tokenizer = bert_jax.load_pretrained(tmp_path / "ft", head="classification")
    assert loaded["classifier"]["kernel"].shape == (24, 3)  # num_labels from the parameters
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(got, want)
    convert.run([f"--from={tmp_path / 'ft'}", f"--to={tmp_path / 'hf'}", "--format=transformers"])
    auto = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert [auto.config.id2label[i] for i in range(3)] == list(glue.TASKS["mnli"].labels)
    batch = tokenizer(TEXTS)
    np.testing.assert_allclose(
        model.apply({"params": loaded}, **batch)["logits"],
        torch_run(auto, **batch).logits.numpy(),
        rtol=0,
        atol=1e-5,
    )


def test_save_pretrained_writes_tokenizer_files_and_infers_num_labels(tmp_path):
    config = BertConfig(vocab_size=99, hidden_size=24, num_layers=1, num_heads=2, intermediate_size=40,
                        max_position_embeddings=32)  # fmt: skip
    model = build_model(config, "classification", 5)
    params = nn.unbox(init_params(model, jax.random.key(0)))
    _, _, tokenizer = bert_jax.load_pretrained(FIXTURE, do_lower_case=False)
    bert_jax.save_pretrained(tmp_path / "a", params, config, "classification", tokenizer=tokenizer)
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert len(saved["id2label"]) == 5
    assert (
        json.loads((tmp_path / "a" / "tokenizer_config.json").read_text())["do_lower_case"] is False
    )
    assert (
        json.loads((tmp_path / "a" / "special_tokens_map.json").read_text())["mask_token"]
        == "[MASK]"
    )
    _, again, tok2 = bert_jax.load_pretrained(tmp_path / "a", head="classification")
    assert again["classifier"]["kernel"].shape == (24, 5)
    assert tok2("The End")["input_ids"].tolist() == tokenizer("The End")["input_ids"].tolist()
    auto = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "a")
    assert auto.num_labels == 5
    with pytest.raises(ValueError, match="num_labels is 2 but the classifier has 5 outputs"):
        bert_jax.save_pretrained(
            tmp_path / "b", params, config, "classification", 2, tokenizer=tokenizer
        )
    with pytest.warns(UserWarning, match="saved without tokenizer files"):
        bert_jax.save_pretrained(tmp_path / "c", params, config, "classification")


def test_command_errors_are_one_line(tmp_path, capsys):
    def fails(*args):
        with pytest.raises(SystemExit) as exit_info:
            convert.run(list(args))
        message = str(exit_info.value.code)
        assert message.startswith("error: ") and "\n" not in message
        return message

    assert "nope: no such file or directory" in fails(
        f"--from={tmp_path / 'nope'}", f"--to={tmp_path}/o", "--format=tf1"
    )
    # The command as a user runs it: the check's line, then one error line and exit code 1.
    done = subprocess.run(
        [sys.executable, "-m", "bert_jax.convert", f"--from={FIXTURE}", f"--to={tmp_path / 'o1'}",
         "--format=tf1", "--tolerance=-1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert "skipped 93 stored tensors that are not parameters" in done.stdout
    assert (
        "check: prediction_logits, seq_relationship_logits of the source vs bert_jax reading"
        in done.stdout
    )
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'o1'}: conversion check failed: max relative difference 0 > -1"
    )
    assert "Google's code has no token-classification head" in fails(
        f"--from={FIXTURE}", f"--to={tmp_path / 'o2'}", "--format=tf1", "--head=token"
    )
    export.convert_checkpoint(FIXTURE, tmp_path / "o3", "bert_jax")
    assert "checkpoints: already exists" in fails(
        f"--from={FIXTURE}", f"--to={tmp_path / 'o3'}", "--format=bert_jax"
    )

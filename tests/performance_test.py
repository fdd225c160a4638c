"""The speed machinery that runs without an accelerator: device prefetch, the compilation cache, the benchmark
and the GPU matrix script (dry-run with tiny sizes)."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from bert_jax import benchmark, benchmark_torch, flops, gpu_matrix, pretrain, run_setup, sharding
from bert_jax.configs import bert_tiny
from bert_jax.data.phases import Phase
from bert_jax.models import registry

REPO = Path(__file__).resolve().parents[1]


def test_prefetch_keeps_batches_in_flight_and_in_order():
    mesh = sharding.make_mesh((-1, 1, 1))
    pulled = []

    def batches():
        for step in range(5):
            pulled.append(step)
            yield step, {"x": np.full((8, 3), step, np.int32)}

    seen = []
    items = sharding.prefetch_to_device(batches(), mesh, size=2, batch=lambda item: item[1])
    for (step, host), device in items:
        # When step i is handed out, steps up to i + 2 have been read and their copies started.
        assert len(pulled) == min(step + 3, 5)
        assert device["x"].sharding == sharding.batch_sharding(mesh)
        np.testing.assert_array_equal(np.asarray(device["x"]), host["x"])
        seen.append(step)
    assert seen == [0, 1, 2, 3, 4]


def test_compilation_cache_writes_to_the_configured_directory(tmp_path):
    script = (
        "import jax, jax.numpy as jnp\n"
        "from bert_jax import main\n"
        f"main._use_compilation_cache({str(tmp_path / '~cache')!r})\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "jax.jit(lambda x: jnp.sin(x) * 3)(jnp.ones(4)).block_until_ready()\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    entries = [p for p in (tmp_path / "~cache").iterdir() if "-" in p.name]
    assert len(entries) >= 1


def test_benchmark_rows_on_a_tiny_model():
    result = benchmark.run("tiny", 4, 16, 3, dtype="float32", references=(), steps=1)
    rows = {(r["implementation"], r["measure"]): r for r in result["rows"]}
    assert sorted(rows) == [("bert_jax", "fwd+bwd"), ("bert_jax", "train")]
    setup = result["setup"]
    expected_flops = 4 * benchmark.flops.model_flops_per_sequence(
        registry.config_from_fields(registry.presets()["tiny"]), 16, 3
    )
    assert setup["model_flops_per_step"] == expected_flops
    for r in rows.values():
        assert r["seconds"] > 0 and r["compile_seconds"] > 0
        assert r["sequences_per_sec"] == pytest.approx(4 / r["seconds"])
        assert r["mfu"] == pytest.approx(expected_flops / r["seconds"] / setup["peak_flops"])
        assert r["peak_bytes"] is None  # a CPU has no device allocator statistics
    text = benchmark.format_rows(result["rows"])
    assert text.splitlines()[1].split()[:2] == ["bert_jax", "fwd+bwd"]


# Each family's recipe as the benchmark builds it: (objective, optimizer, the reference's name in MODELS).
FAMILY_RECIPES = {
    "roberta": ("mlm", "adamw"),
    "albert": ("mlm_sop", "albert_lamb"),
    "electra": ("rtd", "bert_adam"),
}


def test_every_familys_row_beside_transformers_on_a_tiny_model():
    # fwd+bwd only: the train step is the trainer's generic program (timed for BERT above), and its compile
    # would triple this test's cost; the family's own parts are the loss on each side.
    import torch

    for family, (objective, optimizer) in FAMILY_RECIPES.items():
        result = benchmark.run(
            "tiny", 2, 16, 2, dtype="float32", steps=1, which="fwdbwd", family=family
        )
        print(f"{family}: {benchmark_torch.MODELS[family]}")
        print(benchmark.format_rows(result["rows"]))
        rows = [(r["implementation"], r["measure"]) for r in result["rows"]]
        assert rows == [("bert_jax", "fwd+bwd"), (f"torch {torch.__version__}", "fwd+bwd")]
        setup = result["setup"]
        assert (setup["family"], setup["objective"], setup["optimizer"]) == (
            family,
            objective,
            optimizer,
        )
        config = benchmark.pretraining_config("tiny", 2, 16, 2, dtype="float32", family=family)
        cfg = benchmark.program_lib.model_config(config, config.model.vocab_size)
        assert setup["model_flops_per_step"] == 2 * flops.model_flops_per_sequence(cfg, 16, 2)
        # ALBERT's recipe drops dropout; the others keep the paper's 0.1 (both sides read the recipe).
        assert setup["attention_dropout_prob"] == (0.0 if family == "albert" else 0.1)
        for r in result["rows"]:
            assert r["seconds"] > 0
            assert r["mfu"] == pytest.approx(
                setup["model_flops_per_step"] / r["seconds"] / setup["peak_flops"]
            )


def test_the_references_are_each_familys_transformers_model():
    import torch

    def reference(family):
        config = benchmark.pretraining_config("tiny", 2, 16, 2, dtype="float32", family=family)
        cfg = benchmark.program_lib.model_config(config, config.model.vocab_size)
        batch = benchmark.make_batch(cfg, 2, 16, 2)
        torch.manual_seed(0)
        model, loss_of = benchmark_torch.reference_model(cfg)
        inputs = benchmark_torch.reference_inputs(family, batch, "cpu")
        return cfg, batch, model.train(), loss_of, inputs

    # RoBERTa: one token type, MLM labels at the masked positions only, no pair label.
    cfg, batch, model, _, inputs = reference("roberta")
    assert type(model).__name__ == "RobertaForMaskedLM" and model.config.type_vocab_size == 1
    assert (batch["token_type_ids"] == 0).all() and "next_sentence_label" not in inputs
    labels = inputs["labels"].numpy()
    assert (labels != -100).sum() == 4
    assert (
        np.take_along_axis(labels, batch["masked_lm_positions"], 1) == batch["masked_lm_ids"]
    ).all()
    # ALBERT: factorized at E = 64, one shared layer, the SOP label from next_sentence_labels.
    cfg, batch, model, _, inputs = reference("albert")
    assert type(model).__name__ == "AlbertForPreTraining"
    assert (model.config.embedding_size, model.config.num_hidden_groups) == (64, 1)
    assert (inputs["sentence_order_label"].numpy() == batch["next_sentence_labels"]).all()
    # ELECTRA: generator (1/4 of 64) and discriminator on one embeddings module, the decoder tied to it.
    cfg, batch, model, loss_of, inputs = reference("electra")
    generator, discriminator = model.generator, model.discriminator
    assert (generator.config.hidden_size, discriminator.config.hidden_size) == (16, 64)
    assert generator.electra.embeddings is discriminator.electra.embeddings
    shared = discriminator.electra.embeddings.word_embeddings.weight
    assert generator.generator_lm_head.weight is shared
    own = sum(p.numel() for p in generator.parameters()) + sum(
        p.numel() for p in discriminator.parameters()
    )
    embeddings = sum(p.numel() for p in discriminator.electra.embeddings.parameters())
    assert sum(p.numel() for p in model.parameters()) == own - embeddings
    # At init every logit is ~0: MLM ~ln(vocab), each token's sigmoid cross entropy ~ln 2, weighed 50x.
    with torch.no_grad():
        loss = float(loss_of(model, inputs))
    assert loss == pytest.approx(np.log(cfg.vocab_size) + 50 * np.log(2), abs=1.0)


def test_electra_flops_count_the_generator_and_the_discriminator():
    # ELECTRA-Tiny: discriminator L2/H64/I256 on E = 32 embeddings; generator H16/I64; vocab 30522; 16 tokens,
    # 2 predictions. Forward multiply-adds, by hand:
    config = benchmark.pretraining_config("tiny", 2, 16, 2, dtype="float32", family="electra")
    cfg = benchmark.program_lib.model_config(config, config.model.vocab_size)
    layer = lambda h, i: 16 * (4 * h * h + 2 * h * i) + 2 * 16 * 16 * h
    generator = 2 * layer(16, 64) + 16 * 32 * 16 + 2 * (16 * 32 + 32 * 30522)
    discriminator = 2 * layer(64, 256) + 16 * 32 * 64 + 16 * (64 * 64 + 64)
    assert flops.model_flops_per_sequence(cfg, 16, 2) == 6.0 * (generator + discriminator)


def test_a_size_the_family_lacks_is_one_line():
    with pytest.raises(run_setup.SetupError) as error:
        benchmark.pretraining_config("xxlarge", 2, 16, 2, dtype="float32", family="electra")
    assert str(error.value) == (
        "model: size 'xxlarge' is not one of electra's ['base', 'large', 'small', 'tiny']"
    )


def test_the_benchmark_times_the_trainers_program(monkeypatch):
    built, build = [], benchmark.program_lib.build
    monkeypatch.setattr(
        benchmark.program_lib, "build", lambda *a, **k: built.append(build(*a, **k)) or built[-1]
    )
    result = benchmark.run(
        "tiny", 4, 16, 3, dtype="float32", references=(), steps=1, which="train", grad_accum_steps=2
    )
    assert [(r["implementation"], r["measure"]) for r in result["rows"]] == [("bert_jax", "train")]
    (program,) = built
    # The trainer's program at the benchmark's shape, on one device: one phase, the flags' model.
    assert program.phases == (Phase("phase1", 0, 16, 3, 4),)
    assert dict(program.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert (program.config.grad_accum_steps, program.config.optimizer) == (2, "bert_adam")
    assert program.model_config == registry.config_from_fields(
        dict(**registry.presets()["tiny"], dtype="float32", attention_impl="auto",
             attention_dropout_prob=0.1, embedding_gradient="scatter"),
    )  # fmt: skip


def test_corpus_batch_is_the_trainers_data():
    # The recipe's bundled corpus at phase-1 shape: real ids with [CLS]/[SEP], and padding on the right.
    batch = benchmark.corpus_batch("base", 16, 128, 20)
    assert batch["input_ids"].shape == (16, 128) and batch["masked_lm_ids"].shape == (16, 20)
    mask = batch["attention_mask"].astype(bool)
    lengths = mask.sum(1)
    assert 0.2 < 1 - mask.mean() < 0.8  # the bundled documents are short
    assert (mask == (np.arange(128)[None] < lengths[:, None])).all()
    assert (batch["input_ids"][~mask] == 0).all()


def test_markdown_table_rows_and_failures():
    rows = [
        dict(implementation="bert_jax", measure="train", seconds=0.05, sequences_per_sec=5120.0)
    ]
    rows[0] |= dict(mfu=0.4, peak_bytes=3 * 2**30, compile_seconds=12.34)
    results = [
        dict(name="phase1", shape="base 256x128/20", rows=rows),
        dict(name="phase2", error="timed out after 150 s"),
    ]
    text = gpu_matrix.to_markdown({"commit": "abc"}, results)
    lines = text.splitlines()
    assert lines[2] == "commit abc"
    assert (
        lines[6]
        == "| phase1 | bert_jax | base 256x128/20 | 5120.0 | 40.0% | 50.0 | 3.0 | 12.3 |  |"
    )
    assert lines[7] == "| phase2 | timed out after 150 s | | | | | | | |"


def test_plan_covers_the_issue_matrix():
    runs = {r["name"]: r for r in gpu_matrix.plan(False, Path("/w"))}
    assert list(runs) == [
        "phase1", "trainer", "phase1_corpus", "phase1_corpus_sorted", "trainer2", "phase2", "large",
    ]  # fmt: skip
    assert "--data=corpus" in runs["phase1_corpus"]["cmd"]
    assert "--embedding_gradient=sorted" in runs["phase1_corpus_sorted"]["cmd"]
    assert "--reference=torch,torch_compile" in runs["phase1"]["cmd"]
    for flag in (
        "--batch_size=256",
        "--seq_length=512",
        "--max_predictions=80",
        "--grad_accum_steps=4",
    ):
        assert flag in runs["phase2"]["cmd"]
    assert "--model=large" in runs["large"]["cmd"]
    assert runs["trainer"]["cmd"][1:3] == ["-m", "bert_jax.main"]
    # Both launches share one compilation cache but not a workdir (the second would just resume).
    cache = [a for a in runs["trainer2"]["cmd"] if "compilation_cache_dir" in a]
    assert cache == [a for a in runs["trainer"]["cmd"] if "compilation_cache_dir" in a] != []
    assert runs["trainer"]["workdir"] != runs["trainer2"]["workdir"]
    assert sum(r["cap"] for r in runs.values()) >= 330  # the budget, not the caps, bounds the total


@pytest.mark.slow
def test_matrix_dry_run_writes_the_table(tmp_path):
    # The whole GPU matrix with tiny sizes on a CPU: every run finishes and becomes rows of numbers.
    gpu_matrix.main(
        ["--out", str(tmp_path), "--dry_run", "--budget_s", "900", "--only", "phase1,trainer"]
        + ["--profile"]
    )
    # --profile: phase 1's kernel table, trace and optimized HLO of the train step come back.
    kernels = (tmp_path / "phase1_kernels.txt").read_text()
    assert kernels.startswith("vm.trace.json.gz: ") and "  <- " in kernels  # annotated from the HLO
    assert (tmp_path / "phase1.trace.json.gz").stat().st_size > 0
    with gzip.open(tmp_path / "phase1_hlo.txt.gz", "rt") as f:
        assert "HloModule jit_train_step" in f.readline()
    matrix = json.loads((tmp_path / "matrix.json").read_text())
    runs = {r["name"]: r for r in matrix["runs"]}
    assert [r.get("error") for r in runs.values()] == [None, None]
    assert [row["implementation"] for row in runs["phase1"]["rows"]][0] == "bert_jax"
    assert runs["phase1"]["rows"][1]["implementation"].startswith("torch ")
    trainer = runs["trainer"]["rows"][0]
    assert trainer["implementation"] == "bert_jax.main" and trainer["seconds"] > 0
    assert 0 < trainer["first_step"] < runs["trainer"]["seconds"]
    table = (tmp_path / "matrix.md").read_text().splitlines()
    assert table[4].startswith("| run | implementation |")
    assert len([line for line in table if line.startswith("| phase1 |")]) == 2
    assert len([line for line in table if line.startswith("| trainer |")]) == 1
    assert jax.default_backend() == "cpu"


@pytest.mark.parametrize(
    "impl,message",
    [
        (
            "cudnn",
            "model: attention_impl 'cudnn' cannot run: it needs a GPU and the JAX backend is 'cpu'",
        ),
        ("jax", "model: attention_impl 'jax' applies no dropout to the attention probabilities"),
    ],
)
def test_impossible_attention_impl_stops_the_trainer_with_one_line(tmp_path, impl, message):
    config = bert_tiny.get_config()
    config.model.attention_impl = impl
    with pytest.raises(run_setup.SetupError) as error:
        pretrain.run(config, str(tmp_path))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_matrix_without_the_packages_says_so_and_runs_nothing(tmp_path, monkeypatch):
    find_spec = gpu_matrix.importlib.util.find_spec
    monkeypatch.setattr(
        gpu_matrix.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboardX" else find_spec(name, *a),
    )
    gpu_matrix.main(["--out", str(tmp_path), "--only", "trainer,trainer2"])
    runs = json.loads((tmp_path / "matrix.json").read_text())["runs"]
    expected = "not run: tensorboardX not installed (carry wheels: --wheels)"
    assert [r["error"] for r in runs] == [expected, expected]
    assert (tmp_path / "runs.log").read_text() == ""

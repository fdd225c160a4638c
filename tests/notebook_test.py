"""notebooks/bert_jax_colab.ipynb runs top to bottom on the CPU in its small setting (as CI runs it), and what it
made is what it says: a pretraining run whose MLM loss fell, a fine-tuning run with its leaderboard file,
predictions, and a transformers export that transformers loads with the same outputs (asserted in the notebook)."""

import json
import os
from pathlib import Path

import nbclient
import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "bert_jax_colab.ipynb"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_cpu(tmp_path, monkeypatch):
    work = tmp_path / "work"
    monkeypatch.setenv("BERT_JAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("BERT_JAX_NOTEBOOK_DIR", str(work))
    # One CPU device, as a user's machine: the 8 fake devices of the other tests only slow it down.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # The kernel and the commands it starts import this checkout's bert_jax.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    # Raises CellExecutionError, naming the cell and its traceback, if any cell fails.
    client.execute()

    # The install cell found the checkout's bert_jax rather than cloning one.
    assert not (work / "bert_jax_src").exists()
    metrics = [
        json.loads(line) for line in (work / "pretrain" / "metrics.jsonl").read_text().splitlines()
    ]
    mlm = [m["train/mlm_loss"] for m in metrics if "train/mlm_loss" in m]
    assert len(mlm) == 8 and mlm[-1] < mlm[0] - 0.5, mlm
    results = json.loads((work / "sst2" / "results.json").read_text())
    assert results["init_checkpoint"].startswith(str(work / "pretrain" / "checkpoints"))
    assert results["num_train_examples"] == 512 and len(results["epochs"]) == 2
    # The task's rule (label 1 iff "river" was put in) is learnt from the pretrained encoder.
    assert results["results"]["sst2"]["accuracy"] >= 0.9, results["epochs"]
    board = (work / "sst2" / "leaderboard" / "SST-2.tsv").read_text().splitlines()
    assert board[0] == "index\tprediction" and len(board) == 1 + 32
    predictions = [
        json.loads(line) for line in (work / "predictions.jsonl").read_text().splitlines()
    ]
    assert [p["index"] for p in predictions] == [0, 1, 2, 3]
    assert [p["prediction"] for p in predictions] == ["0", "1", "0", "1"]
    exported = sorted(p.name for p in (work / "sst2_transformers").iterdir())
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= set(
        exported
    )
    # The live plot left the curves as an image output of the pretraining cell.
    images = [
        cell for cell in notebook.cells if cell.cell_type == "code"
        for out in cell.get("outputs", []) if "image/png" in out.get("data", {})
    ]  # fmt: skip
    assert len(images) >= 2


def test_notebook_opens_on_colab_from_a_documented_public_install():
    """The badge opens the notebook on Colab; its install cell is the README's pip command (a git URL with the
    [notebook] extra, plus [tpu] on a TPU runtime), and that extra holds what the notebook imports."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    first = notebook.cells[0].source
    badge = "https://colab.research.google.com/github/OWNER/bert_jax/blob/main/notebooks/bert_jax_colab.ipynb"
    assert (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({badge})"
        in first
    )
    install = next(c.source for c in notebook.cells if c.cell_type == "code" and "pip" in c.source)
    assert (
        'REPO = os.environ.get("BERT_JAX_REPO", "https://github.com/OWNER/bert_jax.git")' in install
    )
    assert 'extras = "notebook,tpu" if on_tpu else "notebook"' in install
    assert '"pip", "install", "-q", f"bert_jax[{extras}] @ git+{REPO}"' in install
    readme = (REPO / "README.md").read_text()
    assert 'pip install "bert_jax[notebook] @ git+https://github.com/OWNER/bert_jax.git"' in readme
    assert f"({badge})" in readme
    setup = (REPO / "setup.py").read_text()
    extra = setup.split("NOTEBOOK = [", 1)[1].split("]", 1)[0]
    assert [line.strip().strip('",').split(">=")[0] for line in extra.strip().splitlines()] == [
        "torch", "transformers", "nbclient", "nbformat", "ipykernel"
    ]  # fmt: skip
    assert '"notebook": NOTEBOOK' in setup
    imported = {
        line.split()[1].split(".")[0]
        for cell in notebook.cells if cell.cell_type == "code"
        for line in cell.source.splitlines() if line.startswith(("import ", "from "))
    }  # fmt: skip
    # Beyond the standard library, bert_jax and its own dependencies: only what the extra installs.
    assert imported - {"json", "os", "pathlib", "random", "subprocess", "sys", "time", "importlib",
                       "bert_jax", "numpy", "IPython"} == {"torch", "transformers"}  # fmt: skip

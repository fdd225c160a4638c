"""docs/data.md "Getting real data": its corpus scripts, run from the page on small samples, write files that
bert_jax's corpus reader reads as the documents they hold; its conversion commands run on the tiny TF1
checkpoint in tests/testdata (the TFDS route is tests/data_loader_test.py's mocked-TFDS test)."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bert_jax.data import corpus

REPO = Path(__file__).resolve().parents[1]
PAGE = (REPO / "docs" / "data.md").read_text()
SECTION = PAGE.split("## Getting real data", 1)[1].split("\n## ", 1)[0]
ENV = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}


def _script(name):
    # The ```python block that follows the line naming the script.
    after = SECTION.split(f"`{name}` (save the script below", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.DOTALL).group(1)


def _documents(pattern):
    stats = corpus.CorpusStats()
    return list(corpus.iter_text_documents(pattern, stats))


def test_wiki_to_text_writes_the_original_format(tmp_path):
    (tmp_path / "wiki_to_text.py").write_text(_script("wiki_to_text.py"))
    (tmp_path / "extracted" / "AA").mkdir(parents=True)
    articles = [
        {"id": "1", "title": "Anarchism", "text": "Anarchism is a philosophy. It is old.\nIt has many schools."},
        {"id": "2", "title": "Stub", "text": "A stub. Too short."},
        {"id": "3", "title": "Albedo", "text": "Albedo is a measure. It is 0.3 for Earth! Snow is bright."},
    ]  # fmt: skip
    (tmp_path / "extracted" / "AA" / "wiki_00").write_text(
        "".join(json.dumps(a) + "\n" for a in articles)
    )
    done = subprocess.run(
        [sys.executable, "wiki_to_text.py", "extracted/*/wiki_*", "wiki_text"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2 articles in 1 files\n"
    assert _documents(str(tmp_path / "wiki_text" / "*.txt")) == [
        ["Anarchism is a philosophy.", "It is old.", "It has many schools."],
        ["Albedo is a measure.", "It is 0.3 for Earth!", "Snow is bright."],
    ]


def test_books_to_text_rewraps_paragraphs(tmp_path):
    (tmp_path / "books_to_text.py").write_text(_script("books_to_text.py"))
    (tmp_path / "pg19_train").mkdir()
    (tmp_path / "pg19_train" / "10.txt").write_text(
        "THE TITLE\n\nIt was a dark and\nstormy night. The rain fell\nin torrents.\n\nExcept at occasional\nintervals.\n"
    )
    done = subprocess.run(
        [sys.executable, "books_to_text.py", "pg19_train/*.txt", "books_text"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _documents(str(tmp_path / "books_text" / "*.txt")) == [
        ["THE TITLE", "It was a dark and stormy night.", "The rain fell in torrents.",
         "Except at occasional intervals."]
    ]  # fmt: skip


@pytest.mark.slow
def test_conversion_commands_run_on_a_tf1_checkpoint(tmp_path):
    block = SECTION.split("converted once to another layout", 1)[1]
    commands = re.search(r"```bash\n(.*?)```", block, re.DOTALL).group(1).strip().splitlines()
    source = REPO / "tests" / "testdata" / "tf1_uncased_L-2_H-36_A-3"
    assert len(commands) == 2
    for command in commands:
        args = [a.replace("uncased_L-12_H-768_A-12", str(source)) for a in shlex.split(command)]
        args = [a.replace("--to=", f"--to={tmp_path}/") for a in args]
        assert args[:3] == ["python", "-m", "bert_jax.convert"]
        done = subprocess.run(
            [sys.executable, *args[1:]], env=ENV, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "bert_base_uncased_hf" / "model.safetensors").is_file()
    assert (tmp_path / "bert_base_uncased_jax" / "checkpoints" / "0").is_dir()

"""The one reader of a bert_jax workdir: a pretraining or fine-tuning run, or a `bert_jax` export
(`WORKDIR/checkpoints/<step>/` with the run's stored config beside the parameters).

`read(path)` gives the stored config, the model fields, the tokenizer (and the spec to load it again), the
parameters (top-level modules as stored, via `checkpoint.restore_params`), the head they are for and the label
names. Warm start, export, convert and predict all read workdirs here, so they agree on every path.

A run copies its tokenizer files into `WORKDIR/tokenizer/` when it starts (`save_tokenizer`), so the workdir
works after it is moved, read from another directory, or after the vocabulary it was made with is gone.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from etils import epath

from bert_jax import checkpoint, configs
from bert_jax.data import glue
from bert_jax.data.corpus import sample_vocab
from bert_jax.data.tokenizer import load_tokenizer

# Where a run keeps the copy of its tokenizer files.
TOKENIZER_DIR = "tokenizer"
# The files of a tokenizer directory (transformers layout) worth copying.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    # RoBERTa's byte-level BPE.
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@dataclasses.dataclass
class Workdir:
    """What a bert_jax workdir holds."""

    path: epath.Path  # absolute
    step: int
    # Top-level modules as stored ({"bert": ..., "mlm": ..., "nsp": ...} or {"bert": ..., "classifier": ...}).
    params: dict
    # The config saved with the checkpoint (a pretraining recipe, or a fine-tuning run's fields).
    stored: dict
    # "pretrain", "finetune" or "export".
    mode: str
    # BertConfig fields as stored (vocab_size -1 means the tokenizer's).
    model_fields: dict
    tokenizer: object
    # {"path", "do_lower_case"}: how to load the tokenizer again (an absolute path that exists now).
    tokenizer_spec: dict
    # The head the parameters are for, when the run stored it (exports and task runs); None otherwise.
    head: str | None
    # Class names in id order, when the run names them.
    labels: list[str] | None
    # WORKDIR/checkpoints/<step>, for logs and error messages.
    source: str


def absolute(path) -> epath.Path:
    """`path` as an absolute path (Orbax needs one); gs:// and other URLs are absolute already."""
    return epath.Path(path if "://" in str(path) else os.path.abspath(os.fspath(path)))


def is_workdir(path) -> bool:
    """Whether `path` is a bert_jax workdir (it has checkpoints/)."""
    return (epath.Path(path) / "checkpoints").is_dir()


def read_stored(path) -> tuple[int, dict]:
    """(latest step, stored config) of a workdir without reading any array: the cheap check of its kind."""
    reader = checkpoint.Checkpointer(
        str(absolute(path) / "checkpoints"), keep=1, save_interval_steps=1, async_save=False
    )
    try:
        step, stored = reader.read_config()
        # An old run's fields under their new names (configs.RENAMED).
        return step, configs.translate(stored)
    finally:
        reader.close()


def read(path, step: int | None = None, *, do_lower_case: bool | None = None) -> Workdir:
    """Reads workdir `path` (relative or absolute): its checkpoint at `step` (default the latest usable one),
    stored config and tokenizer. `do_lower_case` overrides the stored casing. One-line errors for a path that
    is no workdir or a tokenizer that cannot be found."""
    path = absolute(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such directory")
    if not is_workdir(path):
        raise FileNotFoundError(f"{path}: no checkpoints/ (not a bert_jax workdir)")
    step, params, stored = checkpoint.restore_params(str(path / "checkpoints"), step)
    stored = configs.translate(stored)
    source = str(path / "checkpoints" / str(step))
    spec = tokenizer_spec(stored)
    spec["path"] = _find_tokenizer(path, spec["path"], source)
    if do_lower_case is not None:
        spec["do_lower_case"] = do_lower_case
    tokenizer = open_tokenizer(spec["path"], spec["do_lower_case"], field=source)
    mode = stored.get("mode", "pretrain")
    return Workdir(
        path=path,
        step=step,
        params=params,
        stored=stored,
        mode=mode,
        model_fields=dict(stored["model"]),
        tokenizer=tokenizer,
        tokenizer_spec=spec,
        head=stored.get("head"),
        labels=_labels(stored),
        source=source,
    )


def tokenizer_spec(stored) -> dict:
    """{"path", "do_lower_case"} of the tokenizer a stored config (or a run's config) names, as typed:
    fine-tuning runs and exports store it under "tokenizer", pretraining runs name their recipe's `vocab_file`
    and `do_lower_case` (an old run's `data.vocab_file`, read through configs.RENAMED)."""
    stored = configs.translate(stored.to_dict() if hasattr(stored, "to_dict") else dict(stored))
    if "tokenizer" in stored:
        return dict(stored["tokenizer"])
    return {
        "path": stored.get("vocab_file") or str(sample_vocab(stored.get("family", "bert"))),
        "do_lower_case": stored.get("do_lower_case", True),
    }


def open_tokenizer(path, do_lower_case: bool | None, *, field: str | None = None):
    """`load_tokenizer`, with one-line errors that name the path (after `field`, when given) and say what to
    do."""
    where = f"{field}: {path}" if field else str(path)
    if not epath.Path(path).exists():
        raise FileNotFoundError(
            f"{where}: no such file or directory; give a vocab.txt, a SentencePiece .model or a tokenizer "
            "directory (relative paths are read from the current directory)"
        )
    try:
        return load_tokenizer(str(path), do_lower_case=do_lower_case)
    except ValueError as error:
        # The tokenizer's own line names the file and what to give instead (a binary file, an empty vocab).
        raise ValueError(f"{field}: {error}" if field else str(error)) from None


def _find_tokenizer(path: epath.Path, named: str, source: str) -> str:
    """The tokenizer a workdir's run used: its own copy first (it moves with the workdir), then the stored path
    (absolute, or relative to the current directory or to the workdir), then an export's vocab.txt."""
    copy = path / TOKENIZER_DIR
    name = os.path.basename(str(named).rstrip("/"))
    candidates = [copy / name, copy] if name else [copy]
    if "://" in named or os.path.isabs(named):
        candidates.append(epath.Path(named))
    else:
        candidates += [absolute(named), path / named]
    candidates.append(path / "vocab.txt")  # exports written before tokenizer/ copies existed
    for candidate in candidates:
        if candidate.exists() and (candidate != copy or any(copy.iterdir())):
            return str(candidate)
    raise FileNotFoundError(
        f"{source}: its tokenizer {named} is gone and {copy} holds no copy; put the vocabulary the run used "
        f"there ({copy}/{name or 'vocab.txt'})"
    )


def save_tokenizer(workdir, stored) -> None:
    """Copies the tokenizer that `stored` (a run's config, see `tokenizer_spec`) names into WORKDIR/tokenizer/,
    from process 0, replacing an older copy (a run started over with another vocabulary). A resumed run whose
    source has moved since keeps the copy its first start made."""
    if jax.process_index() != 0:
        return
    target = absolute(workdir) / TOKENIZER_DIR
    source = absolute(tokenizer_spec(stored)["path"])
    if not source.exists() or str(source).startswith(str(target)):
        return
    if source.is_dir():
        names = [n for n in _TOKENIZER_FILES if (source / n).exists()]
        names += [p.name for p in source.glob("*.model")]
    else:
        names = [source.name]
    files = {name: (source / name if source.is_dir() else source).read_bytes() for name in names}
    if target.exists():
        for old in target.iterdir():
            old.unlink()
    target.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (target / name).write_bytes(content)


def _labels(stored) -> list[str] | None:
    """Class names in id order: stored by exports, else the GLUE task's when the run was a GLUE task."""
    labels = stored.get("id2label")
    task = glue.TASKS.get(stored.get("task", ""))
    if labels is None and task is not None and task.labels:
        labels = list(task.labels)
    return labels

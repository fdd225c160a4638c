"""Predictions of a fine-tuned GLUE model for new rows:

    python -m bert_jax.predict --workdir=FINETUNE_WORKDIR --input=rows.tsv [--output=predictions.tsv]

The workdir is one fine-tuning run (`python -m bert_jax.main --config=configs/glue.py ...`); its checkpoint holds
the model, the tokenizer's path, the task and `max_seq_length`, so nothing else is needed. The input is a TSV file
with a header or a JSONL file (one object per row) whose columns/keys are the task's GLUE columns (the test
files' own, e.g. `sentence` for SST-2, `#1 String`/`#2 String` for MRPC) or the generic `text_a` (and `text_b`
for pair tasks). The output (TSV or JSONL, by its suffix; default INPUT.predictions.<input's suffix>) has one row
per input row, in input order: `index` (the file's index column when it has one, else the row number), the
`prediction` (the label string, or STS-B's score clipped to [0, 5], as the leaderboard files) and, for
classification, each label's probability. Rows are tokenized and batched at fixed shapes (the last batch padded),
so the model compiles once. Bad input is one line: `error: ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Sequence

import jax
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from bert_jax import metrics, run_setup, sharding, tasks, train_lib
from bert_jax import workdir as workdir_lib
from bert_jax.data import glue
from bert_jax.models import registry

FORMATS = (".tsv", ".jsonl")


class PredictError(ValueError):
    """Bad input (workdir, input file, columns); the command prints it as one line."""


@dataclasses.dataclass
class Classifier:
    """A fine-tuned GLUE model restored from its workdir, with what it needs to read new text."""

    task: glue.Task
    model: object
    params: dict
    tokenizer: object
    max_seq_length: int
    eval_batch_size: int
    mesh_shape: tuple[int, ...]
    # Where the parameters came from: WORKDIR/checkpoints/<step>.
    source: str


# ----------------------------------------------------------------------------------------------------------
# The model: a fine-tuning run's checkpoint and stored config.
# ----------------------------------------------------------------------------------------------------------
def load_classifier(workdir) -> Classifier:
    """The fine-tuned model of a fine-tuning workdir. Raises PredictError for a path that is not one."""
    workdir = run_setup.absolute_workdir(workdir)
    checkpoints = workdir / "checkpoints"
    if not workdir.is_dir():
        raise PredictError(f"--workdir={workdir}: no such directory")
    if not checkpoints.is_dir():
        raise PredictError(f"--workdir={workdir}: {_not_a_run(workdir)}")
    # The stored config first: the wrong kind of workdir fails before any array is read.
    try:
        _, stored = workdir_lib.read_stored(workdir)
    except ValueError as error:
        raise PredictError(f"--workdir={workdir}: {error}") from None
    # GLUE runs: one task's ("finetune") or a suite's ("glue_suite").
    if tasks.MODES.get(stored.get("mode")) != "glue" or "num_labels" not in stored:
        raise PredictError(
            f"--workdir={workdir} is a {stored.get('mode', 'unknown')} workdir; predict needs a fine-tuned "
            "GLUE model (a run of --config=configs/glue.py)"
        )
    if not (workdir / "results.json").exists():
        print(
            f"note: {workdir} has no results.json: the run is unfinished, predicting with its latest "
            "checkpoint",
            file=sys.stderr,
        )
    try:
        run = workdir_lib.read(workdir)
    except (ValueError, OSError) as error:
        raise PredictError(f"--workdir={workdir}: {str(error).splitlines()[0]}") from None
    step, params, stored = run.step, run.params, run.stored
    task = glue.get_task(stored["task"])
    model = registry.build(
        registry.config_from_fields(stored["model"], stored.get("family", "bert")),
        "classification",
        task.num_labels,
    )
    return Classifier(
        task, model, params, run.tokenizer,
        max_seq_length=stored["max_seq_length"],
        eval_batch_size=stored["eval_batch_size"],
        mesh_shape=tuple(stored["mesh_shape"]),
        source=f"{checkpoints}/{step}",
    )  # fmt: skip


def _not_a_run(workdir: epath.Path) -> str:
    """Why a directory without checkpoints/ is not a run, with the run to use when it is a sweep's summary."""
    results = workdir / "results.json"
    if results.exists():
        summary = json.loads(results.read_text())
        if "best_run" in summary:
            return f"a sweep's summary; predict with its best run: --workdir={summary['best_run']['workdir']}"
        if "glue_table" in summary:
            return "a GLUE suite's summary; predict with one task's run: --workdir=WORKDIR/<task>"
    return "no checkpoints/ (not a bert_jax fine-tuning workdir)"


# ----------------------------------------------------------------------------------------------------------
# The rows: TSV with a header, or JSONL; the task's GLUE columns or text_a/text_b.
# ----------------------------------------------------------------------------------------------------------
def text_columns(task: glue.Task, available: Sequence[str], where: str) -> tuple[str, ...]:
    """The columns holding text_a (and text_b): the task's GLUE names, else the generic ones."""
    generic = ("text_a", "text_b")[: len(task.text_columns)]
    for names in (task.text_columns, generic):
        if all(name in available for name in names):
            return names
    raise PredictError(
        f"{where}: {task.name} needs the column(s) {list(task.text_columns)} or {list(generic)}; "
        f"found {list(available)}"
    )


def read_rows(path, task: glue.Task) -> tuple[list[str], list[str] | None, list]:
    """(text_a, text_b or None, index) of every row of a TSV or JSONL file, in file order."""
    path = epath.Path(path)
    if path.suffix not in FORMATS:
        raise PredictError(f"--input={path}: expected a .tsv or .jsonl file")
    if not path.is_file():
        raise PredictError(f"--input={path}: no such file")
    try:
        lines = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise PredictError(f"--input={path}: not UTF-8 ({error.reason})") from None
    # Split on "\n" only, as the GLUE reader: texts may hold other Unicode line breaks.
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(lines.split("\n"), 1) if line.strip()]
    if not lines:
        raise PredictError(f"--input={path}: empty file")
    if path.suffix == ".tsv":
        header = lines[0][1].split("\t")
        records = []
        for number, line in lines[1:]:
            fields = line.split("\t")
            if len(fields) != len(header):
                raise PredictError(
                    f"{path}:{number}: {len(fields)} tab-separated fields, the header has {len(header)}"
                )
            records.append((number, dict(zip(header, fields, strict=True))))
        names = text_columns(task, header, f"{path}:1")
    else:
        records = []
        for number, line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PredictError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise PredictError(f"{path}:{number}: not a JSON object")
            records.append((number, record))
        names = text_columns(task, list(records[0][1]), f"{path}:{records[0][0]}")
    if not records:
        raise PredictError(f"--input={path}: no rows after the header")
    columns = [[] for _ in names]
    for number, record in records:
        for column, name in zip(columns, names, strict=True):
            if not isinstance(record.get(name), str):
                raise PredictError(f"{path}:{number}: {name!r} is missing or not a string")
            column.append(record[name])
    index_name = task.index_column
    if all(index_name in record for _, record in records):
        index = [record[index_name] for _, record in records]
    else:
        index = list(range(len(records)))
    return columns[0], columns[1] if len(columns) == 2 else None, index


# ----------------------------------------------------------------------------------------------------------
# Predicting: fixed-shape batches through one jitted forward pass, as the fine-tuning run's own predictions.
# ----------------------------------------------------------------------------------------------------------
def predict(
    classifier: Classifier, text_a: list[str], text_b: list[str] | None, batch_size: int
) -> np.ndarray:
    """The model's logits [rows, num_labels] for the rows, in their order."""
    mesh = train_lib.make_mesh(classifier.mesh_shape, {"batch_size": batch_size})
    rows = glue.Examples(
        task=classifier.task.name, split="test", idx=np.arange(len(text_a)),
        text_a=text_a, text_b=text_b, labels=None,
    )  # fmt: skip
    features = glue.encode_examples(rows, classifier.tokenizer, classifier.max_seq_length)
    boxed = jax.eval_shape(train_lib.boxed_init(classifier.model), jax.random.key(0))
    param_shardings = sharding.logical_shardings(boxed, mesh)
    params = jax.device_put(classifier.params, param_shardings)
    # The GLUE task's own eval step and batching: the fine-tuning run's leaderboard predictions.
    p_eval_step = jax.jit(
        functools.partial(tasks.eval_step, task=tasks.glue, model=classifier.model),
        in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )
    out = tasks.predict(p_eval_step, params, features, batch_size, mesh)
    # Padding rows are gone; the example ids are the row numbers, so this puts the rows back in input order.
    return np.asarray(out["logits"], np.float32)[np.argsort(out["example_ids"])]


def prediction_rows(task: glue.Task, logits: np.ndarray, index: list) -> list[dict]:
    """One dict per row: index, prediction (label string or clipped score), probabilities per label."""
    predicted = metrics.predictions_from_outputs(task, logits)
    if task.is_regression:
        return [
            {"index": i, "prediction": round(float(np.clip(p, 0.0, 5.0)), 3)}
            for i, p in zip(index, predicted, strict=True)
        ]
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities = shifted / shifted.sum(-1, keepdims=True)
    return [
        {
            "index": i,
            "prediction": task.labels[p],
            "probabilities": {label: float(q) for label, q in zip(task.labels, row, strict=True)},
        }
        for i, p, row in zip(index, predicted, probabilities, strict=True)
    ]


def write_rows(path: epath.Path, task: glue.Task, rows: list[dict]) -> None:
    """TSV (`index`, `prediction`, `probability_<label>`...) or JSONL, by the path's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return
    header = ["index", "prediction", *(f"probability_{label}" for label in task.labels)]
    lines = ["\t".join(header)]
    for row in rows:
        values = [str(row["index"]), str(row["prediction"])]
        values += [f"{q:.6f}" for q in row.get("probabilities", {}).values()]
        lines.append("\t".join(values))
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bert_jax.predict",
        description="Predict new rows (TSV with a header, or JSONL) with a fine-tuned GLUE model.",
    )
    parser.add_argument("--workdir", required=True, help="a fine-tuning run's workdir")
    parser.add_argument("--input", required=True, help="rows.tsv or rows.jsonl")
    parser.add_argument(
        "--output", help="predictions .tsv or .jsonl (default: INPUT.predictions.<suffix>)"
    )
    parser.add_argument(
        "--batch_size", type=int, help="rows per batch (default: the run's eval_batch_size)"
    )
    args = parser.parse_args(argv)
    source = epath.Path(args.input)
    output = epath.Path(args.output or source.with_suffix(f".predictions{source.suffix}"))
    try:
        if output.suffix not in FORMATS:
            raise PredictError(f"--output={output}: expected a .tsv or .jsonl file")
        classifier = load_classifier(args.workdir)
        text_a, text_b, index = read_rows(source, classifier.task)
        batch_size = args.batch_size or classifier.eval_batch_size
        logits = predict(classifier, text_a, text_b, batch_size)
        write_rows(output, classifier.task, prediction_rows(classifier.task, logits, index))
    except (PredictError, run_setup.SetupError, OSError) as error:
        sys.exit(f"error: {str(error).strip().splitlines()[0]}")
    print(
        f"wrote {len(index)} {classifier.task.name} predictions to {output} ({classifier.source})"
    )
    return 0


if __name__ == "__main__":
    main()

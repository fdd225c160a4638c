"""The paper's fine-tuning grid over several seeds, and the whole GLUE suite, on top of `finetune.run`.

python -m bert_jax.main --config=configs/glue.py --config.task=rte --config.sweep=True ...
python -m bert_jax.main --config=configs/glue.py --config.mode=glue_suite ...
"""

from __future__ import annotations

import itertools
import json
import math

import jax
import numpy as np
from absl import logging
from etils import epath

from bert_jax import finetune, metrics, reporting, run_setup
from bert_jax.data import glue
from bert_jax.run_setup import setup_error

FROM_MNLI = ("rte", "mrpc", "stsb")  # tasks the suite may start from the fine-tuned MNLI model


def _copy_leaderboard(source: epath.Path, target: epath.Path) -> None:
    """Copies SOURCE/leaderboard/*.tsv into TARGET/leaderboard/ (process 0)."""
    if jax.process_index() == 0 and (source / "leaderboard").is_dir():
        (target / "leaderboard").mkdir(parents=True, exist_ok=True)
        for f in (source / "leaderboard").glob("*.tsv"):
            f.copy(target / "leaderboard" / f.name, overwrite=True)


def _median_results(runs: list[dict]) -> dict:
    """Per-entry, per-metric median over the runs' dev results."""
    first = runs[0]["results"]
    return {
        e: {m: float(np.median([r["results"][e][m] for r in runs])) for m in first[e]}
        for e in first
    }


def _finished(run_dir: epath.Path) -> dict | None:
    """A grid member's summary (with "workdir") when its results.json is complete, else None: a member with none,
    or one torn by a kill while it was written, goes through finetune.run (which resumes it)."""
    path = run_dir / "results.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        return None
    if not isinstance(summary, dict) or not {"score", "results"} <= summary.keys():
        return None
    logging.info("%s: done before, reusing its results", run_dir)
    return {**summary, "workdir": str(run_dir)}


def run(config, workdir) -> dict:
    """One run, or with `config.sweep` the paper's grid x seeds; WORKDIR/results.json says the best.

    A sweep's runs go to WORKDIR/runs/<setting>_seed<k>/; a run that already has its results.json is
    reused and one stopped part-way resumes (a restarted sweep goes on where it stopped); with `overwrite`
    every member trains again from the start. The best single run's leaderboard files are copied
    to WORKDIR/leaderboard/. Returns the summary (with `workdir`: the run that holds the best checkpoint).
    """
    workdir = run_setup.absolute_workdir(workdir)
    if not config.sweep:
        return finetune.run(config, workdir)
    grid = itertools.product(
        config.sweep_batch_sizes, config.sweep_learning_rates, config.sweep_num_epochs
    )
    settings = []
    for batch_size, learning_rate, num_epochs in grid:
        runs = []
        for seed in config.sweep_seeds:
            run_config = config.copy_and_resolve_references()
            run_config.update(
                global_batch_size=batch_size, learning_rate=learning_rate, num_epochs=num_epochs,
                num_train_steps=None, seed=seed, sweep=False,
            )  # fmt: skip
            run_dir = (
                workdir / "runs" / f"bs{batch_size}_lr{learning_rate:g}_ep{num_epochs}_seed{seed}"
            )
            summary = None if config.overwrite else _finished(run_dir)
            if summary is None:
                # A member killed part-way resumes from its checkpoints; `overwrite` retrains every member.
                summary = finetune.run(run_config, run_dir)
            summary["score"] = -math.inf if summary["score"] is None else summary["score"]
            runs.append({"seed": seed, **{k: summary[k] for k in ("score", "results", "workdir")}})
        scores = [r["score"] for r in runs]
        settings.append({
            "batch_size": batch_size, "learning_rate": learning_rate, "num_epochs": num_epochs,
            "median_score": float(np.median(scores)), "median_results": _median_results(runs),
            "runs": runs,
        })  # fmt: skip
    best_run = max((r for s in settings for r in s["runs"]), key=lambda r: r["score"])
    best_setting = max(settings, key=lambda s: s["median_score"])
    _copy_leaderboard(epath.Path(best_run["workdir"]), workdir)
    summary = {
        "task": glue.get_task(config.task).name,
        "split": "dev",
        # Dev-selected, as the paper selected its fine-tuning setting: the best run of the grid (each run's
        # score is its final epoch's; its final model made the leaderboard files).
        "selection": "dev-selected: best final-epoch dev score over the grid and seeds",
        "results": best_run["results"],
        "score": best_run["score"],
        "best_run": best_run,
        "median_over_seeds": {k: v for k, v in best_setting.items() if k != "runs"},
        "settings": settings,
        "config": config.to_dict(),
    }
    reporting.write_json(workdir / "results.json", summary)
    logging.info(
        "%s sweep: best dev score %.4f (%s); best median over seeds %.4f (bs %d, lr %g, %d epochs)",
        summary["task"], best_run["score"], best_run["workdir"], best_setting["median_score"],
        best_setting["batch_size"], best_setting["learning_rate"], best_setting["num_epochs"],
    )  # fmt: skip
    return {**summary, "workdir": best_run["workdir"]}


def run_suite(config, workdir) -> str:
    """Fine-tunes every task of `config.suite_tasks` into WORKDIR/<task>/ and returns the GLUE table.

    With `suite_from_mnli`, RTE, MRPC and STS-B start from the fine-tuned MNLI model (whose classifier is
    re-initialised). Writes WORKDIR/results.json (entry -> metric -> dev value), WORKDIR/glue_table.txt and
    every task's leaderboard files into WORKDIR/leaderboard/.
    """
    workdir = run_setup.absolute_workdir(workdir)
    with setup_error("suite_tasks"):
        tasks = [glue.get_task(t).name for t in config.suite_tasks]
        if config.suite_from_mnli and "mnli" not in tasks:
            raise ValueError("suite_from_mnli needs mnli in suite_tasks")
    tasks.sort(key=lambda t: t != "mnli")  # MNLI first: the others may start from it
    results, summaries = {}, {}
    for name in tasks:
        task_config = config.copy_and_resolve_references()
        task_config.task = name
        if config.suite_from_mnli and name in FROM_MNLI:
            task_config.init_checkpoint = summaries["mnli"]["workdir"]
        summaries[name] = run(task_config, workdir / name)
        results.update(summaries[name]["results"])
        _copy_leaderboard(workdir / name, workdir)
    # A sweep picks each task's setting on dev (as the paper): the table says so.
    table = metrics.format_glue_table(results, split="dev-selected" if config.sweep else "dev")
    summary = {"split": "dev", "results": results, "glue_table": table, "config": config.to_dict()}
    reporting.write_json(workdir / "results.json", summary)
    if jax.process_index() == 0:
        (workdir / "glue_table.txt").write_text(table + "\n")
        print(table, flush=True)
    return table

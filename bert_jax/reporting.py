"""What a run reports: one metric window (the same key means the same thing in every loop), the writer (the log,
TensorBoard, WORKDIR/metrics.jsonl, WORKDIR/config.json), the progress lines a person reads, and JSON results."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging
from etils import epath

from bert_jax.run_setup import flat_config


class MetricWindow:
    """The step metrics between two log lines, kept on the device until `flush`.

    Every step's metrics hold `loss`, `grad_norm`, `learning_rate`, `nonfinite` (from `guarded_update`) and the
    loop's own sums. `flush` returns the window's sums and the scalars every loop logs, with one meaning each:
    `train/loss` and `train/grad_norm` are means over the window's finite steps, `train/learning_rate` the last
    step's, `train/nonfinite_steps` the total skipped since the process started, and `perf/*` the throughput
    (MFU when FLOPs and a peak are given).
    """

    def __init__(self, peak_flops: float = math.nan):
        self.peak_flops, self.nonfinite_total = peak_flops, 0
        self.steps = []
        self.restart()

    def restart(self) -> None:
        """Restarts the throughput clock (after an eval or a save, which are not train time). The steps'
        metrics stay: `train/loss` is the mean over every step since the last log line, whatever the eval and
        checkpoint frequencies."""
        self.timed_steps, self.sequences, self.tokens, self.flops = 0, 0, 0, 0.0
        self.real_tokens = 0
        self.start = time.perf_counter()

    def add(
        self,
        metrics,
        *,
        sequences: int,
        tokens: int,
        flops: float = 0.0,
        real_tokens: int | None = None,
    ) -> None:
        """One step: its `sequences`, `tokens` (every slot of the batch, padding included), `real_tokens`
        (the non-padding ones; default all) and `flops` (of the real tokens only, so MFU is useful work)."""
        self.steps.append(metrics)
        self.real_tokens += tokens if real_tokens is None else real_tokens
        self.timed_steps += 1
        self.sequences, self.tokens, self.flops = (
            self.sequences + sequences,
            self.tokens + tokens,
            self.flops + flops,
        )

    def flush(self) -> tuple[dict[str, float], dict[str, float]]:
        """(sums of every metric, the shared scalars); empties the window and restarts its clock."""
        sums = jax.tree.map(lambda *xs: float(np.sum(xs)), *jax.device_get(self.steps))
        elapsed = time.perf_counter() - self.start
        self.nonfinite_total += int(sums["nonfinite"])
        # No finite step in the window: no value.
        good = len(self.steps) - sums["nonfinite"] or math.nan
        scalars = {
            "train/loss": sums["loss"] / good,
            "train/grad_norm": sums["grad_norm"] / good,
            "train/learning_rate": float(jax.device_get(self.steps[-1]["learning_rate"])),
            "train/nonfinite_steps": self.nonfinite_total,
            "perf/step_time": divide(elapsed, self.timed_steps),
            "perf/sequences_per_sec": divide(self.sequences, elapsed),
            "perf/tokens_per_sec": divide(self.tokens, elapsed),
            "perf/real_tokens_per_sec": divide(self.real_tokens, elapsed),
            "perf/padding_fraction": 1.0 - divide(self.real_tokens, self.tokens),
        }
        if self.flops:
            scalars["perf/mfu"] = self.flops / elapsed / self.peak_flops
        self.steps = []
        self.restart()
        return sums, scalars


def say(text: str) -> None:
    """A line for the person at the terminal (process 0, stdout), kept in the log too."""
    logging.info("%s", text)
    if jax.process_index() == 0:
        print(text, flush=True)


class Progress:
    """What a person reads on stdout (process 0): the workdir, one compact line per log step, each save; on a
    terminal a progress bar instead of the lines. The full scalars go to the log, TensorBoard and
    metrics.jsonl (MetricWriter).

    `fields`: (label, scalar key, format) for the line, e.g. ("loss", "train/loss", ".3f").
    """

    def __init__(self, total: int, start: int, fields, *, active: bool | None = None):
        import sys

        self.total, self.fields = total, fields
        self.active = jax.process_index() == 0 if active is None else active
        self._bar = None
        if self.active and sys.stdout.isatty():
            import tqdm

            self._bar = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        self._at = start

    def print(self, text: str) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def line(self, step: int, scalars: Mapping[str, float]) -> str:
        parts = [f"step {step:,}/{self.total:,} ({step / self.total:.1%})"]
        for label, key, spec in self.fields:
            if key in scalars and math.isfinite(scalars[key]):
                parts.append(f"{label} {scalars[key]:{spec}}")
        if "perf/sequences_per_sec" in scalars:
            parts.append(f"{scalars['perf/sequences_per_sec']:,.0f} seq/s")
        if math.isfinite(scalars.get("perf/mfu", math.nan)):
            parts.append(f"MFU {scalars['perf/mfu']:.1%}")
        if "perf/step_time" in scalars:
            parts.append(f"ETA {_duration((self.total - step) * scalars['perf/step_time'])}")
        return " · ".join(parts)

    def update(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.update(step - self._at)
            self._bar.set_postfix_str(self.line(step, scalars).split(" · ", 1)[-1])
        else:
            print(self.line(step, scalars), flush=True)
        self._at = step

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _duration(seconds: float) -> str:
    """'6d 3h', '2h 5m', '4m 10s', '12s'."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def divide(a: float, b: float) -> float:
    """a / b, or NaN when there is no weight (e.g. a window of skipped steps)."""
    return a / b if b > 0 else math.nan


class MetricWriter:
    """Writes a step's scalars to the log (one line), TensorBoard and WORKDIR/metrics.jsonl.

    `resume_step`: the step this run starts from (a restored step, or 0 for a fresh start); lines past it were
    logged by a run that died before saving them and are dropped, so each step appears once. None keeps every
    line. A torn last line (a crash mid-write) is dropped with one warning. Only process 0 writes; on the others
    every method does nothing. Non-finite values are logged as they are and stored as null in the JSON lines,
    which stay valid JSON.
    """

    def __init__(
        self, workdir: str | os.PathLike, *, process_index: int, resume_step: int | None = None
    ):
        self._active = process_index == 0
        if not self._active:
            return
        # Imported here: tensorboardX imports torch whenever it is installed (1 s or more),
        # which code that only needs the metrics should not pay.
        import tensorboardX

        workdir = self._workdir = epath.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "metrics.jsonl"
        if path.exists():
            _drop_lines_past(path, resume_step)
        # Append, so a resumed run keeps the lines of the run it continues.
        self._jsonl = path.open("a")
        self._tensorboard = tensorboardX.SummaryWriter(logdir=os.fspath(workdir))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Writes `scalars` (Python, NumPy or JAX scalars) for `step`."""
        if not self._active:
            return
        values = {key: float(value) for key, value in scalars.items()}
        logging.info(
            "step %d: %s", step, ", ".join(f"{k}={v:.6g}" for k, v in sorted(values.items()))
        )
        for key, value in values.items():
            self._tensorboard.add_scalar(key, value, global_step=step)
        record = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": int(step), **record}, allow_nan=False) + "\n")
        # A line per call on disk at once: a preempted run keeps every metric it logged.
        self._jsonl.flush()

    def write_config(self, config) -> None:
        """The run's config into WORKDIR/config.json and TensorBoard (as text), not onto stdout."""
        if not self._active:
            return
        text = json.dumps(flat_config(config), indent=2, default=str, sort_keys=True)
        (self._workdir / "config.json").write_text(text + "\n")
        self._tensorboard.add_text("config", f"```\n{text}\n```", global_step=0)

    def flush(self) -> None:
        if self._active:
            self._jsonl.flush()
            self._tensorboard.flush()

    def close(self) -> None:
        """Flushes and closes; later calls are no-ops. A failing flush (a full disk) is one warning line: close
        runs in the loops' cleanup, where raising would replace the error that stopped the run."""
        if self._active:
            self._active = False
            for name, stream in (
                ("metrics.jsonl", self._jsonl),
                ("TensorBoard events", self._tensorboard),
            ):
                try:
                    stream.close()
                except Exception as error:  # noqa: BLE001 -- reported as one line, see above
                    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                    logging.warning(
                        "could not flush %s in %s: %s: %s",
                        name,
                        self._workdir,
                        type(error).__name__,
                        first,
                    )

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _drop_lines_past(path: epath.Path, step: int | None) -> None:
    """Rewrites metrics.jsonl without the lines past `step` (None: keeps them) and without a torn line."""
    keep, torn = [], 0
    for line in path.read_text().splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            torn += 1  # a write cut short by a crash
            continue
        if step is None or record.get("step", 0) <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
    if torn:
        logging.warning("%s: dropped %d torn line(s) (a write cut short by a crash)", path, torn)
    partial = path.parent / (path.name + ".tmp")
    partial.write_text("".join(keep))
    partial.replace(path)


def write_json(path: epath.Path, value) -> None:
    """Writes `value` as indented JSON from process 0; non-finite floats become null."""
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean = lambda x: None if isinstance(x, float) and not math.isfinite(x) else x
        text = json.dumps(jax.tree.map(clean, value), indent=2, default=str, allow_nan=False)
        path.write_text(text + "\n")

r"""The accelerator speed matrix in one command: benchmark phases, bert_large and the trainer end to end.

    python3 -m bert_jax.gpu_matrix --out=$OUT --wheels=.whl      # on one GPU, within --budget_s (9 min)
    python -m bert_jax.gpu_matrix --out=/tmp/matrix --dry_run     # the same runs with tiny sizes, on a CPU

Each run is a subprocess with a time limit taken from one overall budget (`--budget_s`), in priority order:
  phase1      bert_base, 256 x 128, 20 predictions, bf16, AdamW step; beside transformers eager and compiled
  trainer     `python -m bert_jax.main` on the bundled corpus (data pipeline, logging, a checkpoint), fresh
              compilation cache: steady step time and launch -> first step
  phase1_corpus  bert_jax's phase 1 step on the trainer's first batch (`--data=corpus`: real ids, padding)
  phase1_corpus_sorted  the same with `--embedding_gradient=sorted` (no colliding scatter on the pad id)
  trainer2    the same again with the cache the first launch wrote (launch -> first step, second launch)
  phase2      bert_base, 256 x 512, 80 predictions, gradient accumulation, beside transformers eager
  large       bert_large phase 1
After every run OUT/matrix.md (a Markdown table) and OUT/matrix.json are rewritten, so a run cut short still
reports what finished; OUT/runs.log holds every run's output. A run that fails or runs out of time is a row
saying so, never a number.

With `--profile`, phase 1's bert_jax step is also traced (3 steps, `jax.profiler`) and its optimized HLO
dumped: OUT/phase1_kernels.txt (device time per kernel, `bert_jax.kernel_times`), OUT/phase1.trace.json.gz
(the trace, for `python -m bert_jax.kernel_times` or Perfetto) and OUT/phase1_hlo.txt.gz (the fusions the
kernel names refer to).

Packages the GPU image lacks (ml_collections for the recipes, tensorboardX for the trainer's metrics) are
installed from wheels in `--wheels` when they are not importable (docs/performance.md has the download command);
without them the runs that need them are rows saying so.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bert_jax import kernel_times

REPO = Path(__file__).resolve().parents[1]
# Packages each kind of run needs that the GPU image may lack, by import name (the recipes are ml_collections).
NEEDS = {"bench": ("ml_collections",), "trainer": ("ml_collections", "tensorboardX")}
FIRST_STEP = "first step finished"


def plan(dry_run: bool, workdir: Path) -> list[dict]:
    """The runs, in priority order: name, command line, time cap (s) and kind."""
    py = sys.executable
    bench = [py, "-m", "bert_jax.benchmark", "--only=train"]
    cache = workdir / "compilation_cache"
    if dry_run:
        sizes = dict(
            phase1=["--model=tiny", "--batch_size=4", "--seq_length=16", "--max_predictions=3"],
            phase2=["--model=tiny", "--batch_size=4", "--seq_length=32", "--max_predictions=5"],
            large=["--model=tiny", "--batch_size=4", "--seq_length=16", "--max_predictions=3"],
        )
        common, refs = ["--steps=1", "--dtype=float32"], "--reference=torch"
        trainer = [
            "--config=bert_tiny",
            "--config.num_train_steps=4",
            "--config.warmup_steps=1",
            "--config.global_batch_size=8",
            "--config.log_every_steps=2",
        ]
    else:
        sizes = dict(
            phase1=["--model=base", "--batch_size=256", "--seq_length=128", "--max_predictions=20"],
            phase2=[
                "--model=base",
                "--batch_size=256",
                "--seq_length=512",
                "--max_predictions=80",
                "--grad_accum_steps=4",
            ],
            large=["--model=large", "--batch_size=256", "--seq_length=128", "--max_predictions=20"],
        )
        common, refs = ["--steps=10", "--dtype=bfloat16"], "--reference=torch,torch_compile"
        trainer = [
            "--config=bert_base",
            "--config.dtype=bfloat16",
            "--config.num_train_steps=60",
            "--config.warmup_steps=6",
            "--config.log_every_steps=20",
        ]
    trainer += [
        "--config.eval_every_steps=0",
        "--config.data.phase2_fraction=0",
        f"--config.compilation_cache_dir={cache}",
    ]
    main = [py, "-m", "bert_jax.main"]
    return [
        dict(
            name="phase1",
            kind="bench",
            # torch.compile's compilation and both warm-ups run inside this cap.
            cap=300,
            profile=True,
            cmd=bench + sizes["phase1"] + common + [refs],
        ),
        dict(
            name="trainer",
            kind="trainer",
            cap=150,
            workdir=workdir / "trainer1",
            cmd=main + trainer + [f"--workdir={workdir / 'trainer1'}"],
        ),
        # Phase 1 on the trainer's own batch (real token frequencies, the corpus's padding): what the
        # step costs on the data the trainer sees, beside the uniform random batch above.
        dict(
            name="phase1_corpus",
            kind="bench",
            cap=120,
            cmd=bench + sizes["phase1"] + common + ["--reference=none", "--data=corpus"],
        ),
        # The same batch with the word-embedding gradient as a sorted segmented sum (bert_jax/models/lookup.py).
        dict(
            name="phase1_corpus_sorted",
            kind="bench",
            cap=120,
            cmd=bench
            + sizes["phase1"]
            + common
            + ["--reference=none", "--data=corpus", "--embedding_gradient=sorted"],
        ),
        dict(
            name="trainer2",
            kind="trainer",
            cap=90,
            workdir=workdir / "trainer2",
            cmd=main + trainer + [f"--workdir={workdir / 'trainer2'}"],
        ),
        # Phase 2 steps take ~4x longer: fewer of them.
        dict(
            name="phase2",
            kind="bench",
            cap=150,
            cmd=bench + sizes["phase2"] + common + ["--steps=3", "--reference=torch"],
        ),
        dict(
            name="large",
            kind="bench",
            cap=150,
            cmd=bench + sizes["large"] + common + ["--reference=none"],
        ),
    ]


def _environment(wheels: str | None, scratch: Path) -> tuple[dict, str | None]:
    """(subprocess environment, {kind of run: the packages it needs that are missing})."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [str(REPO)]
    wanted = sorted({m for names in NEEDS.values() for m in names})
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    if missing and wheels and Path(wheels).is_dir():
        target = scratch / "site"
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        pip += ["--no-compile", "--target", str(target), *map(str, Path(wheels).glob("*.whl"))]
        result = subprocess.run(pip, capture_output=True, text=True)
        if result.returncode == 0:
            paths.append(str(target))
            sys.path.append(str(target))
            importlib.invalidate_caches()
            missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env, {kind: [m for m in names if m in missing] for kind, names in NEEDS.items()}


def _run(cmd, env, timeout: float, log) -> tuple[int | None, float, float | None, str]:
    """(exit code or None on timeout, seconds, seconds to the trainer's first step or None, output)."""
    start = time.monotonic()
    first_step, lines = [], []
    log.write(f"\n$ {' '.join(map(str, cmd))}\n")
    log.flush()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def read():  # a thread, so that the time of the first-step line is when it was printed
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log.write(line)
            if not first_step and FIRST_STEP in line:
                first_step.append(time.monotonic() - start)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
        log.write(f"[killed after {timeout:.0f} s]\n")
    reader.join(10)
    log.flush()
    seconds = time.monotonic() - start
    return code, seconds, (first_step or [None])[0], "\n".join(lines)


def _profiled(cmd: list, env: dict, scratch: Path) -> tuple[list, dict]:
    """The command and environment of a run that also traces its step and dumps its optimized HLO."""
    dump = scratch / "hlo"
    flags = f"--xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*train_step.*"
    env = dict(env, XLA_FLAGS=f"{env.get('XLA_FLAGS', '')} {flags}".strip())
    return cmd + [f"--profile_dir={scratch / 'profile'}"], env


def _keep_profile(name: str, output: str, scratch: Path, out: Path) -> None:
    """Copies a profiled run's kernel table (annotated from its optimized HLO), trace and optimized HLO
    (gzipped) into `out`."""
    lines = output.splitlines()
    first = [i for i, line in enumerate(lines) if ".trace.json.gz: " in line][:1]
    table = "\n".join(lines[first[0] :]) + "\n" if first else "no kernel table in the output\n"
    traces = sorted((scratch / "profile").rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    dumps = sorted(
        (scratch / "hlo").glob("*train_step*after_optimizations.txt"),
        key=lambda p: p.stat().st_size,
    )
    steps = re.search(r"(\d+) step\(s\) traced", table)
    if traces and dumps and steps:
        # The same table, each fusion named by the JAX operation it came from.
        table = kernel_times.table(traces[-1], int(steps.group(1)), 60, hlo=dumps[-1]) + "\n"
    (out / f"{name}_kernels.txt").write_text(table)
    # The files that come back from a device machine are capped at 16 MiB each.
    if traces and traces[-1].stat().st_size < 15 * 2**20:
        shutil.copy(traces[-1], out / f"{name}.trace.json.gz")
    if dumps:
        with open(dumps[-1], "rb") as src, gzip.open(out / f"{name}_hlo.txt.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)


def _trainer_metrics(workdir: Path) -> dict | None:
    """The last logged training window of a trainer run (step time, seq/s, MFU)."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "perf/step_time" in r]
    return rows[-1] if rows else None


def _gib(value):
    return "n/a" if value is None else f"{value / 2**30:.1f}"


def to_markdown(header: dict, results: list[dict]) -> str:
    """The matrix as Markdown: the setup line, then one row per implementation and run."""
    lines = [
        "# bert_jax accelerator matrix",
        "",
        ", ".join(f"{k} {v}" for k, v in header.items()),
        "",
        "| run | implementation | batch | seq/s | MFU | step ms | peak GiB | compile s | launch->first step s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("error"):
            lines.append(f"| {r['name']} | {r['error']} | | | | | | | |")
            continue
        for row in r["rows"]:
            lines.append(
                f"| {r['name']} | {row['implementation']} | {r['shape']} "
                f"| {row['sequences_per_sec']:.1f} | {row['mfu']:.1%} | {row['seconds'] * 1e3:.1f} "
                f"| {_gib(row.get('peak_bytes'))} | "
                + ("" if row.get("compile_seconds") is None else f"{row['compile_seconds']:.1f}")
                + " | "
                + ("" if row.get("first_step") is None else f"{row['first_step']:.1f}")
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Folder for matrix.md, matrix.json, runs.log.")
    parser.add_argument("--wheels", default=None, help="Folder of wheels for missing packages.")
    # 9 minutes: one call of a lent GPU (10 at most). On the H100, phase 1 with both references took ~165 s
    # and the trainer ~95 s; phase 2 and bert_large may not fit after the others: `--only=phase2,large`.
    parser.add_argument("--budget_s", type=float, default=540.0, help="Seconds for all the runs.")
    parser.add_argument("--dry_run", action="store_true", help="Tiny sizes (a CPU check).")
    parser.add_argument("--only", default="", help="Comma-separated run names (default: all).")
    parser.add_argument(
        "--profile", action="store_true", help="Trace phase 1's step and keep its kernels and HLO."
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bert_jax_matrix_"))
    env, missing = _environment(args.wheels, scratch)
    if args.dry_run:
        # As the tests run the entry point: a CPU, even where libtpu is installed.
        env["JAX_PLATFORMS"] = "cpu"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    header = {"commit": commit or "unknown", "python": platform.python_version()}
    results: list[dict] = []
    runs = plan(args.dry_run, scratch)
    if args.only:
        runs = [r for r in runs if r["name"] in args.only.split(",")]
    trainer_shape = "tiny 8x128/20" if args.dry_run else "base 256x128/20"
    with open(out / "runs.log", "w") as log:
        for run in runs:
            left = args.budget_s - (time.monotonic() - start)
            result = {"name": run["name"], "command": " ".join(run["cmd"][1:])}
            results.append(result)
            if missing[run["kind"]]:
                names = ", ".join(missing[run["kind"]])
                result["error"] = f"not run: {names} not installed (carry wheels: --wheels)"
            elif left < 20:
                result["error"] = f"not run: {args.budget_s:.0f} s budget spent"
            else:
                json_out = scratch / f"{run['name']}.json"
                cmd = run["cmd"] + ([f"--json_out={json_out}"] if run["kind"] == "bench" else [])
                profiled = args.profile and run.get("profile", False)
                run_env = env
                if profiled:
                    cmd, run_env = _profiled(cmd, env, scratch)
                code, seconds, first_step, output = _run(cmd, run_env, min(run["cap"], left), log)
                if profiled:
                    _keep_profile(run["name"], output, scratch, out)
                result["seconds"] = seconds
                if code is None:
                    result["error"] = f"timed out after {seconds:.0f} s"
                elif code != 0:
                    last = [line for line in output.splitlines() if line.strip()][-1:] or ["?"]
                    result["error"] = f"failed (exit {code}): {last[0][:200]}"
                elif run["kind"] == "bench":
                    bench = json.loads(json_out.read_text())
                    s = bench["setup"]
                    header.update(
                        device=s["device"], jax=s["jax"], peak=f"{s['peak_flops']:.3g} FLOP/s"
                    )
                    result["shape"] = (
                        f"{s['model']} {s['batch_size']}x{s['seq_length']}/{s['max_predictions']}"
                        + (f" accum {s['grad_accum_steps']}" if s["grad_accum_steps"] > 1 else "")
                    )
                    result["rows"] = bench["rows"]
                else:
                    metrics = _trainer_metrics(run["workdir"])
                    if metrics is None:
                        result["error"] = "finished without a logged training window"
                    else:
                        result["shape"] = trainer_shape
                        result["rows"] = [
                            {
                                "implementation": "bert_jax.main",
                                "sequences_per_sec": metrics["perf/sequences_per_sec"],
                                "mfu": metrics["perf/mfu"],
                                "seconds": metrics["perf/step_time"],
                                "peak_bytes": None,
                                "compile_seconds": None,
                                "first_step": first_step,
                            }
                        ]
            header["wall_s"] = f"{time.monotonic() - start:.0f}"
            (out / "matrix.json").write_text(
                json.dumps({"header": header, "runs": results}, indent=1)
            )
            (out / "matrix.md").write_text(to_markdown(header, results))
    print((out / "matrix.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

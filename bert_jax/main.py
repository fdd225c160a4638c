"""Entry point: `python -m bert_jax.main --config=configs/bert_base.py --workdir=DIR [--config.FIELD=VALUE ...]`.

With no flags it runs the embedded default: BERT-Tiny pretraining on the bundled sample corpus
(configs/bert_tiny.py) in ./workdir/bert_tiny, a few minutes on a laptop CPU. An existing workdir resumes from
its latest checkpoint. On a Cloud TPU pod slice run the same command on every worker (launch/run.sh); JAX's
distributed runtime starts there when the slice has several hosts (a one-host VM and Colab need none). Elsewhere
pass --coordinator_address, --num_processes and --process_id on every process. A run stopped by SIGTERM or
Ctrl-C saves and exits with EXIT_STOPPED (75); rerunning the command resumes it.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import threading
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from bert_jax import configs, platforms, run_setup

# The exit status of a run stopped by SIGTERM (preemption, launch/stop.sh) or Ctrl-C after it saved its state:
# sysexits.h's EX_TEMPFAIL, "try again later". Not 0, so `train && finetune` does not go on with a half-trained
# model; not 1, which is an error; rerunning the same command resumes the run.
EXIT_STOPPED = 75

# The recipes ship inside the package, so they resolve from any directory.
CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS / "bert_tiny.py"


def resolve_config(value: str) -> str:
    """The recipe file for `--config=VALUE`: an existing path as is, else a packaged recipe named
    `configs/NAME.py`, `NAME.py` or `NAME` (an optional `:ARG` suffix is kept). Raises ValueError naming the
    recipes when there is none, and for a shared base (configs.BASES) that is not run itself."""
    path, colon, arg = value.partition(":")
    name = Path(path).name
    packaged = CONFIGS / (name if name.endswith(".py") else f"{name}.py")
    if Path(path).is_file():
        resolved = Path(path).resolve()
    elif packaged.is_file():
        resolved = packaged
    else:
        raise ValueError(
            f"--config={value}: no such file, and no packaged recipe of that name "
            f"({', '.join(configs.recipes())})"
        )
    if resolved.parent == CONFIGS and resolved.stem in configs.BASES:
        raise ValueError(
            f"--config={value}: configs/{resolved.stem}.py is {configs.BASES[resolved.stem]}"
        )
    return value if Path(path).is_file() else f"{packaged}{colon}{arg}"


def _resolve_config_argv(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
    return rename_overrides(out)


def rename_overrides(argv: list[str]) -> list[str]:
    """`argv` with each `--config.OLD=V` (or `--config.OLD V`) of configs.RENAMED as the new field(s), and one
    deprecation line on stderr per old name: the previous release's names work for this one release."""
    out, i = [], 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        name, equals, value = arg.partition("=")
        old = name[len("--config.") :] if name.startswith("--config.") else None
        if old not in configs.RENAMED:
            out.append(arg)
            continue
        new = configs.RENAMED[old]
        sys.stderr.write(
            f"warning: --config.{old} is deprecated and will be removed in the next release; use "
            f"{' and '.join(f'--config.{n}' for n in new)}\n"
        )
        if not equals and i < len(argv) and not argv[i].startswith("-"):
            # `--config.OLD VALUE`; a lone `--config.OLD` (a boolean) stays valueless.
            equals, value, i = "=", argv[i], i + 1
        out += [f"--config.{n}{equals}{value}" for n in new]
    return out


# config_flags reads argv when the flag is defined (to define the --config.FIELD overrides), so the recipe's
# path is resolved before that.
try:
    sys.argv = _resolve_config_argv(sys.argv)
except ValueError as error:
    sys.exit(f"error: {error}")

try:
    # Defining the flag loads the recipe and defines its --config.FIELD overrides from argv: a misspelt field
    # fails here, before absl's own parsing.
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        str(DEFAULT_CONFIG),
        "Config file (a recipe in configs/); --config.FIELD=VALUE overrides.",
    )
except Exception as error:  # noqa: BLE001 -- ml_collections raises KeyError/AttributeError for a bad field
    message = " ".join(str(error).replace("\\n", " ").split()).strip("'\"").replace("\\'", "'")
    sys.exit(f"error: unknown config field {message}")
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Checkpoints and metrics (local or gs://). Default: ./workdir/<config file name>.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs off Cloud TPU."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (with --coordinator_address)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (with --coordinator_address)."
)
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout_s",
    60,
    "Seconds to wait for every process to join, and without a heartbeat before a process counts as dead.",
)


class _QuietLog:
    """What the log on stderr leaves out: Orbax's per-save INFO chatter (its warnings and errors still show), and
    the full metrics line of each log step, which would repeat the progress line on stdout in ~450 characters.
    The full metrics are in WORKDIR/metrics.jsonl and TensorBoard; --verbosity=1 puts them in the log too."""

    def filter(self, record) -> bool:
        if record.levelno >= std_logging.WARNING:
            return True
        if record.funcName == "write_scalars" and record.pathname.endswith("reporting.py"):
            return logging.get_verbosity() >= 1
        return "/orbax/" not in record.pathname


def _initialize_distributed() -> None:
    """Joins the multi-process run, decided explicitly (docs/tpu.md):

    - --coordinator_address given: JAX's distributed runtime with the flags' address, count and index;
    - a TPU VM whose slice has several hosts (platforms.tpu_hosts: TPU_WORKER_HOSTNAMES or the metadata
      server): the runtime, which finds the workers in the TPU metadata;
    - one host (a laptop, a GPU machine, Colab's TPU, a v5e-1/v6e-1/v4-8 VM): nothing; one process needs no
      runtime, and JAX's TPU cluster detection can fail on a host that has no worker list.

    A process that cannot join (a host missing, a wrong address) exits with one line within
    --distributed_timeout_s, where JAX would abort with a C++ trace after 5 minutes. A host lost later is
    named in one line by every other (host_watchdog) within about half that timeout, before JAX's own abort
    (which still comes first when the lost one is process 0, the coordinator)."""
    if _COORDINATOR.value:
        args, where = (
            (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value),
            _COORDINATOR.value,
        )
    elif platforms.tpu_chips_attached() and (hosts := platforms.tpu_hosts()) > 1:
        args, where = (), f"the TPU metadata's coordinator ({hosts} hosts)"
    else:
        return
    import jax

    timeout = _DISTRIBUTED_TIMEOUT.value
    joined = threading.Event()

    def give_up():
        # JAX aborts the process when its own (longer) deadline passes; this line and exit come first.
        if not joined.wait(timeout):
            sys.stderr.write(
                f"error: process {_PROCESS_ID.value} could not join the run at {where} within {timeout} s "
                "(is every process started, with the same --coordinator_address and --num_processes?)\n"
            )
            sys.stderr.flush()
            os._exit(1)

    threading.Thread(target=give_up, daemon=True).start()
    try:
        jax.distributed.initialize(
            *args, initialization_timeout=timeout + 30, heartbeat_timeout_seconds=timeout
        )
    except (RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise run_setup.SetupError(
            f"joining the run at {where}: {first} (off a TPU pod slice, pass --coordinator_address, "
            "--num_processes and --process_id)"
        ) from error
    finally:
        # The attempt is over, joined or failed with its own line: the deadline thread must not exit the
        # process later (in a live process it would end whatever runs then).
        joined.set()
    _watch_hosts(where, timeout)


def _watch_hosts(where: str, heartbeat_timeout_s: int) -> None:
    """Starts the watchdog that names a host lost mid-run in one line before JAX aborts (host_watchdog)."""
    from bert_jax import host_watchdog

    try:
        # JAX's private runtime state: the one way to its client (the key-value store) in jax 0.10.
        from jax._src import distributed as jax_distributed

        state = jax_distributed.global_state
        if getattr(state, "client", None) is None or (state.num_processes or 1) < 2:
            return
        args = (state.client, state.process_id, state.num_processes)
        # On a pod slice `where` describes the metadata; the runtime knows the address it found there.
        coordinator = getattr(state, "coordinator_address", None) or where
    except (ImportError, AttributeError) as error:
        # Another JAX: the run goes on, and a lost host ends it with JAX's own message.
        logging.warning("the lost-host watchdog is not available with this JAX (%s)", error)
        return
    host_watchdog.HostWatchdog(
        *args, coordinator, host_watchdog.stale_after(heartbeat_timeout_s)
    ).start()


def check_init_checkpoint(config, workdir: str) -> None:
    """A new run's `init_checkpoint` that does not exist is one line, before the workdir is made (the loops'
    own message lists the layouts it is not). A TF1 checkpoint is a prefix (bert_model.ckpt.index beside it);
    gs:// paths are left to the loop; a workdir that already holds a run resumes without it."""
    path = config.get("init_checkpoint", "")
    if not path or "://" in path or (Path(workdir).is_dir() and any(Path(workdir).iterdir())):
        return
    if not Path(path).exists() and not Path(f"{path}.index").exists():
        raise run_setup.SetupError(
            f"init_checkpoint: {path} does not exist; give a bert_jax workdir, a transformers directory "
            "(config.json + weights) or a TF1 checkpoint prefix (bert_model.ckpt), or leave it empty to "
            "start from random weights"
        )


def unset_other_of_pair(config, argv: list[str]) -> None:
    """For each pair of configs.ONE_OF with exactly one field overridden in `argv`, unsets the recipe's other
    field: `--config.num_train_steps=200` on a fine-tuning recipe (3 epochs) runs 200 steps, and
    `--config.warmup_fraction=0.05` on a pretraining one replaces its 10,000 warmup steps."""
    given = {a.partition("=")[0][len("--config.") :] for a in argv if a.startswith("--config.")}
    for pair in configs.ONE_OF:
        named = [name for name in pair if name in given]
        if len(named) == 1 and all(name in config for name in pair):
            setattr(config, next(n for n in pair if n != named[0]), None)


def _use_compilation_cache(directory: str) -> None:
    """Keeps compiled executables in `directory` (local or gs://) across launches; "" does nothing."""
    if not directory:
        return
    import jax

    if "://" not in directory:
        directory = str(Path(directory).expanduser())
    jax.config.update("jax_compilation_cache_dir", directory)
    logging.info("compilation cache %s", directory)


def main(argv) -> int:
    # First thing: a SIGTERM or Ctrl-C during start-up stops the run cleanly (exit EXIT_STOPPED) instead of
    # killing it.
    from bert_jax import startup

    startup.EarlySignals().install()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    unset_other_of_pair(config, sys.argv)
    workdir = _WORKDIR.value or str(
        Path("workdir") / Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    )
    logging.get_absl_handler().addFilter(_QuietLog())
    _use_compilation_cache(config.get("compilation_cache_dir", ""))

    import jax

    from bert_jax import checkpoint, finetune, host_watchdog, pretrain, sweep, tasks, train_lib
    from bert_jax.data.tfrecord import CorruptRecordError

    # The config goes to WORKDIR/config.json and TensorBoard (the loops write it), not onto the screen.
    try:
        run_setup.check_config(config)
        check_init_checkpoint(config, workdir)
        _initialize_distributed()
        if config.mode == "pretrain":
            state = pretrain.run(config, workdir)
            # The loop returns after saving when a signal stopped it short of num_train_steps.
            if int(state.step) < config.num_train_steps:
                raise run_setup.Preempted(f"saved step {int(state.step):,} in {workdir}")
        elif config.mode == "finetune":
            # One GLUE run, or with `sweep` the paper's grid over seeds: each run is finetune.run.
            sweep.run(config, workdir)
        elif config.mode == "glue_suite":
            sweep.run_suite(config, workdir)
        elif config.mode in tasks.MODES:
            finetune.run(config, workdir)
        else:
            modes = ("pretrain", *tasks.MODES)
            raise run_setup.SetupError(f"config.mode {config.mode!r} is not one of {modes}")
    except (
        run_setup.SetupError,
        train_lib.NonFiniteLossError,
        checkpoint.CheckpointSaveError,
        CorruptRecordError,  # met mid-run: the message names the file, the offset and the way on
    ) as error:
        sys.exit(f"error: {error}")
    except run_setup.Preempted as stopped:
        sys.stderr.write(
            f"stopped: {stopped}; rerun the same command to resume (exit status {EXIT_STOPPED})\n"
        )
        return EXIT_STOPPED
    except jax.errors.JaxRuntimeError:
        # In a multi-process run a failed collective most often means a host was lost: the watchdog's line
        # naming it, not this traceback, is then the last word.
        host_watchdog.await_verdict()
        raise
    except KeyboardInterrupt:
        # A second Ctrl-C: the newest finished checkpoint stands (a save in flight is never "latest").
        sys.exit("error: interrupted; the newest finished checkpoint stands")
    return 0


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every failure (an unknown flag or config field, a bad value, a recipe that does
    not load) as one line naming it."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(f"error: {_first_line(error)}")
    except Exception as error:  # noqa: BLE001 -- the recipe file's own exception, whatever it is
        sys.exit(f"error: --config: {type(error).__name__}: {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    """The message's first line; for a message that carries a traceback, also its last line (the cause)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return f"{lines[0]} {lines[-1].strip()}" if "Traceback" in str(error) else lines[0]


def run() -> None:
    """The `bert-jax` console script and `python -m bert_jax.main`."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()

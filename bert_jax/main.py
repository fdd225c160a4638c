"""Entry point: `python -m bert_jax.main --config=configs/bert_base.py --workdir=DIR [--config.FIELD=VALUE ...]`.

With no flags it runs the embedded default: BERT-Tiny pretraining on the bundled sample corpus
(configs/bert_tiny.py) in ./workdir/bert_tiny, a few minutes on a laptop CPU. An existing workdir resumes from
its latest checkpoint. On a Cloud TPU pod slice run the same command on every worker (launch/run.sh); JAX's
distributed runtime starts by itself there. Elsewhere pass --coordinator_address, --num_processes and
--process_id on every process.
"""

from __future__ import annotations

import importlib.util
import logging as std_logging
import os
import sys
import threading
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

# The recipes ship inside the package, so they resolve from any directory.
CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS / "bert_tiny.py"


def resolve_config(value: str) -> str:
    """The recipe file for `--config=VALUE`: an existing path as is, else a packaged recipe named
    `configs/NAME.py`, `NAME.py` or `NAME` (an optional `:ARG` suffix is kept). Raises ValueError naming the
    recipes when there is none."""
    path, colon, arg = value.partition(":")
    if Path(path).is_file():
        return value
    name = Path(path).name
    packaged = CONFIGS / (name if name.endswith(".py") else f"{name}.py")
    if packaged.is_file():
        return f"{packaged}{colon}{arg}"
    names = sorted(f.stem for f in CONFIGS.glob("*.py") if f.stem != "__init__")
    raise ValueError(
        f"--config={value}: no such file, and no packaged recipe of that name ({', '.join(names)})"
    )


def _resolve_config_argv(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
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


class _QuietOrbax:
    """Drops Orbax's per-save INFO chatter from the log (its warnings and errors still show)."""

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _initialize_distributed() -> None:
    """Joins the multi-process run. A process that cannot join (a host missing, a wrong address) exits with
    one line within --distributed_timeout_s, where JAX would abort with a C++ trace after 5 minutes; a host
    lost later stops the others after the same heartbeat timeout."""
    import jax

    timeout = _DISTRIBUTED_TIMEOUT.value
    where = _COORDINATOR.value or "the TPU metadata's coordinator"
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

    timeouts = {"initialization_timeout": timeout + 30, "heartbeat_timeout_seconds": timeout}
    if _COORDINATOR.value:
        threading.Thread(target=give_up, daemon=True).start()
        jax.distributed.initialize(
            _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, **timeouts
        )
    elif _on_tpu_vm():
        threading.Thread(target=give_up, daemon=True).start()
        # On a Cloud TPU VM the workers, their number and this one's index come from the TPU metadata.
        jax.distributed.initialize(**timeouts)
    joined.set()


def _on_tpu_vm() -> bool:
    """A Cloud TPU VM: libtpu installed and TPU chips attached (/dev/accel* on v4/v5e, /dev/vfio on v5p/v6e).
    libtpu alone is not enough: the [test] and [tpu] extras install it on CPU machines too."""
    import glob
    import os

    if os.environ.get("JAX_PLATFORMS", "") not in ("", "tpu"):
        return False
    chips = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
    return bool(chips) and importlib.util.find_spec("libtpu") is not None


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
    # First thing: a SIGTERM or Ctrl-C during start-up stops the run cleanly (exit 0) instead of killing it.
    from bert_jax import startup

    startup.EarlySignals().install()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    workdir = _WORKDIR.value or str(
        Path("workdir") / Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    )
    logging.get_absl_handler().addFilter(_QuietOrbax())
    _use_compilation_cache(config.get("compilation_cache_dir", ""))

    from bert_jax import checkpoint, finetune_tasks, pretrain, sweep, train_lib
    from bert_jax.data.tfrecord import CorruptRecordError

    # The config goes to WORKDIR/config.json and TensorBoard (the loops write it), not onto the screen.
    try:
        train_lib.check_config(config)
        _initialize_distributed()
        if config.mode == "pretrain":
            pretrain.run(config, workdir)
        elif config.mode == "finetune":
            sweep.run(config, workdir)
        elif config.mode == "glue_suite":
            sweep.run_suite(config, workdir)
        elif config.mode in finetune_tasks.TASKS:
            finetune_tasks.run(config, workdir)
        else:
            modes = ("pretrain", "finetune", "glue_suite", *finetune_tasks.TASKS)
            raise train_lib.SetupError(f"config.mode {config.mode!r} is not one of {modes}")
    except (
        train_lib.SetupError,
        train_lib.NonFiniteLossError,
        checkpoint.CheckpointSaveError,
        CorruptRecordError,  # met mid-run: the message names the file, the offset and the way on
    ) as error:
        sys.exit(f"error: {error}")
    except train_lib.Preempted as stopped:
        logging.warning("preempted: %s; rerun the same command to resume", stopped)
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

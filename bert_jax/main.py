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
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

# A source checkout (or editable install) keeps the recipes beside the package; they import `configs.*`.
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "bert_tiny.py"
if (REPO_ROOT / "configs").is_dir() and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(DEFAULT_CONFIG),
    "Config file (a recipe in configs/); --config.FIELD=VALUE overrides.",
)
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


class _QuietOrbax:
    """Drops Orbax's per-save INFO chatter from the log (its warnings and errors still show)."""

    def filter(self, record) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _initialize_distributed() -> None:
    import jax

    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif importlib.util.find_spec("libtpu") is not None:
        # On a Cloud TPU VM the workers, their number and this one's index come from the TPU metadata.
        jax.distributed.initialize()


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
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["config"].present and not DEFAULT_CONFIG.exists():
        sys.exit(
            f"error: no --config given and the default {DEFAULT_CONFIG} is absent (not a source checkout?)"
        )
    config = _CONFIG.value
    workdir = _WORKDIR.value or str(
        Path("workdir") / Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    )
    logging.get_absl_handler().addFilter(_QuietOrbax())
    _initialize_distributed()
    _use_compilation_cache(config.get("compilation_cache_dir", ""))

    from bert_jax import pretrain, sweep

    logging.info("config:\n%s", config)
    try:
        if config.mode == "pretrain":
            pretrain.train_and_evaluate(config, workdir)
        elif config.mode == "finetune":
            sweep.train_and_evaluate(config, workdir)
        elif config.mode == "glue_suite":
            sweep.run_suite(config, workdir)
        else:
            modes = ("pretrain", "finetune", "glue_suite")
            raise pretrain.SetupError(f"config.mode {config.mode!r} is not one of {modes}")
    except (pretrain.SetupError, pretrain.NonFiniteLossError) as error:
        sys.exit(f"error: {error}")
    return 0


if __name__ == "__main__":
    app.run(main)

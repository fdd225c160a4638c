"""Which accelerator a bert_jax process uses, and how a TPU host joins its run; decided before JAX starts.

Imports no JAX: `bert_jax/__init__.py` calls `skip_absent_tpu()` before any module imports it, and `main` calls
`tpu_hosts()` to decide whether a TPU VM needs JAX's distributed runtime (docs/tpu.md).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import urllib.request

# The TPU VM metadata server's list of this slice's workers, one "ip,..." entry per host (what JAX's own
# Cloud TPU detection reads).
WORKERS_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints"


def tpu_chips_attached() -> bool:
    """TPU chips on this host: /dev/accel* (v2-v5e) or /dev/vfio/N (v5p, v6e)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def skip_absent_tpu() -> None:
    """With libtpu installed (the [tpu] and [test] extras) but no TPU chip, JAX would still try the TPU backend
    on every run and print libtpu's INVALID_ARGUMENT lines, a lockfile hint and "Unable to initialize backend
    'tpu'": noise that reads like failure. There, JAX_PLATFORMS is set to the platforms that can exist (a GPU
    plugin's with a GPU, and the CPU). A JAX_PLATFORMS the user set is kept."""
    if "JAX_PLATFORMS" in os.environ or tpu_chips_attached():
        return
    if importlib.util.find_spec("libtpu") is None:
        return
    platforms = []
    if glob.glob("/dev/nvidia[0-9]*") and any(
        importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13)
    ):
        platforms.append("cuda")
    if os.path.exists("/dev/kfd") and importlib.util.find_spec("jax_rocm7_plugin"):
        platforms.append("rocm")
    os.environ["JAX_PLATFORMS"] = ",".join([*platforms, "cpu"])


def _metadata_worker_count(timeout_s: float = 2.0) -> int | None:
    request = urllib.request.Request(WORKERS_URL, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 -- fixed http URL
            text = answer.read().decode()
    except OSError:
        return None
    return len([entry for entry in text.split(",") if entry.strip()]) or None


def tpu_hosts(environ=None, metadata=_metadata_worker_count) -> int:
    """How many hosts this TPU VM's slice has: 1 on Colab and single-host VMs (v5e-1, v6e-1, v4-8, ...), where
    no distributed runtime is needed; N on a pod slice, where every worker runs the same command.

    From, in order: Colab (always one host); TPU_WORKER_HOSTNAMES (comma-separated, set by the TPU VM runtime and
    GKE); the metadata server's worker list. When none answers, 1: a run on one host works alone, and on a pod
    slice --coordinator_address/--num_processes/--process_id say it explicitly."""
    environ = os.environ if environ is None else environ
    if any(key.startswith("COLAB_") for key in environ):
        return 1
    hostnames = environ.get("TPU_WORKER_HOSTNAMES", "").strip()
    if hostnames:
        return len([h for h in hostnames.split(",") if h.strip()])
    return metadata() or 1

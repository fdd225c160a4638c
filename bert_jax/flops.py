"""The devices' peak FLOP/s and the model FLOPs per sequence (the family's own count, from the model registry):
MFU (model FLOPs utilisation) is one over the other."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from bert_jax.models import registry

# Dense bfloat16 peak FLOP/s of one JAX device, by a substring of `device.device_kind` (first match wins).
# TPU v2/v3 expose each TensorCore as a device (half a chip); v4 and later one device per chip.
PEAK_FLOPS = (
    ("v6 lite", 918e12),
    ("v5 lite", 197e12),
    # v5p
    ("v5", 459e12),
    ("v4", 275e12),
    ("v3", 61.5e12),
    ("v2", 22.5e12),
    ("B200", 2250e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("V100", 125e12),
)


def model_flops_per_sequence(config, length: int, predictions: int) -> float:
    """Training FLOPs of one sequence (forward + backward) as the config's model family counts them
    (`registry.flops_per_sequence`; for BERT: the matmuls, the MLM head at the `predictions` positions only)."""
    return registry.flops_per_sequence(config, length, predictions)


def measure_matmul_peak(sizes=(1024, 2048), repeats: int = 10) -> float:
    """FLOP/s of the fastest float32 [n, n] matmul on the first device (the CPU's practical peak).

    The best of several sizes and repeats, so that a busy moment does not inflate the MFU.
    """
    best = 0.0
    for size in sizes:
        x = jnp.ones((size, size), jnp.float32)
        matmul = jax.jit(lambda a: a @ a)
        matmul(x).block_until_ready()
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(x).block_until_ready()
            best = max(best, 2.0 * size**3 / (time.perf_counter() - start))
    return best


def _cpu_peak_cache() -> tuple[Path, str, dict]:
    """(the cache file, this machine's key in it, its contents)."""
    cache = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "bert_jax"
        / "cpu_peak.json"
    )
    key = f"{platform.processor() or platform.machine()} x{os.cpu_count()}"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    return cache, key, known if isinstance(known, dict) else {}


def known_cpu_peak() -> float:
    """The best float32 matmul rate cached for this machine (0 when none)."""
    _, key, known = _cpu_peak_cache()
    return float(known.get(key, 0.0))


def cached_cpu_peak(measured: float) -> float:
    """The best float32 matmul rate this machine has shown (kept in ~/.cache/bert_jax/cpu_peak.json, by CPU
    model and core count): a measurement taken while other work shares the cores would otherwise inflate MFU."""
    cache, key, known = _cpu_peak_cache()
    best = max(measured, float(known.get(key, 0.0)))
    if best > known.get(key, 0.0):
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({**known, key: best}))
        except OSError:
            pass  # a read-only home: the measured value is still used
    return best


def peak_flops() -> tuple[float, str]:
    """(peak FLOP/s of all devices together, where the number comes from)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        # Fake CPU devices share the host's cores, so the host's measured peak is the whole mesh's.
        # Once this machine has a cached peak, a short probe (one size, 3 repeats) is enough to raise it; the
        # full measurement costs seconds of every run's start-up (and of every subprocess test).
        probe = {"sizes": (1024,), "repeats": 3} if known_cpu_peak() else {}
        return cached_cpu_peak(
            measure_matmul_peak(**probe)
        ), "best measured float32 matmul on this machine"
    for name, flops in PEAK_FLOPS:
        if name.lower() in device.device_kind.lower():
            return flops * jax.device_count(), f"{device.device_kind} bf16 table"
    return math.nan, f"unknown device {device.device_kind!r}"

"""Cloud TPU slices as the compile check names them: each generation's HBM per JAX device and slice names
(`parse_topology`), and the abstract devices libtpu describes for a slice (`topology_devices`), on a machine
with no TPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

import jax

from bert_jax import run_setup

GiB = 2**30
# By generation: HBM per JAX device (bytes), the topology_name prefix libtpu accepts, whether JAX drives a chip's
# two TensorCores as one device ("megacore": v4, v5p), TensorCores per chip (the slice names of v4, v5p and tpu7x
# count them) and JAX devices per chip. v5e and v6e chips have one TensorCore. Ironwood (tpu7x) is two chiplets,
# each a TensorCore with half the chip's 192 GiB of HBM, and JAX sees each as a device: Cloud TPU's TPU7x page
# (docs.cloud.google.com/tpu/docs/tpu7x: 192 GiB HBM and 2 TensorCores per chip, "two TPU devices" per chip);
# libtpu agrees: tpu7x:2x2x1 has 8 devices of kind TPU7x, two per chip coordinate (core_on_chip 0 and 1).
GENERATIONS = {
    "v4": dict(hbm=32 * GiB, prefix="v4", megacore=True, dims=3, cores=2, devices=1),
    "v5p": dict(hbm=95 * GiB, prefix="v5p", megacore=True, dims=3, cores=2, devices=1),
    "v5e": dict(hbm=16 * GiB, prefix="v5e", megacore=False, dims=2, cores=1, devices=1),
    "v6e": dict(hbm=32 * GiB, prefix="v6e", megacore=False, dims=2, cores=1, devices=1),
    "tpu7x": dict(hbm=96 * GiB, prefix="tpu7x", megacore=False, dims=3, cores=2, devices=2),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p", "v7x": "tpu7x"}
# Chips -> physical shape of the standard slices (Cloud TPU's tables).
SHAPES_2D = {
    1: "1x1",
    4: "2x2",
    8: "2x4",
    16: "4x4",
    32: "4x8",
    64: "8x8",
    128: "8x16",
    256: "16x16",
}
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
             512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}  # fmt: skip
VALID_FORMS = (
    "v4-8..v4-4096, v5p-8..v5p-8192 and tpu7x-8..tpu7x-8192 (TensorCores: chips x 2), v5e-1..v5e-256 (also "
    "v5litepod-N) and v6e-1..v6e-256 (chips), or GENERATION:SHAPE such as v5e:4x4, v6e:2x4, v4:2x2x4, v5p:2x2x2, "
    "tpu7x:2x2x1 (or cpu: this machine)"
)


@dataclasses.dataclass(frozen=True)
class Topology:
    """A slice: its generation, libtpu's topology name, its chip count, each JAX device's HBM and the JAX
    devices per chip (2 on tpu7x, whose chips are two devices of half the chip's HBM each; 1 elsewhere)."""

    name: str
    generation: str
    topology_name: str
    chips: int
    hbm_bytes: int
    devices_per_chip: int = 1


def parse_topology(name: str) -> Topology:
    """`v5e-16`, `v4-32`, `v5litepod-16`, `v5e:4x4`, ... -> Topology; one-line ValueError otherwise."""
    bad = f"unknown topology {name!r}; valid forms: {VALID_FORMS}"
    if name.strip().lower() == "cpu":  # this machine's CPU devices: compile times, no HBM limit
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return Topology("cpu", "cpu", "cpu", len(jax.devices("cpu")), memory)
    match = re.fullmatch(r"(v\d[a-z]*|tpu\d[a-z]*)([-:])([0-9x]+)", name.strip().lower())
    if not match:
        raise ValueError(bad)
    generation, sep, size = match.groups()
    generation = ALIASES.get(generation, generation)
    if generation not in GENERATIONS:
        raise ValueError(bad)
    gen = GENERATIONS[generation]
    if sep == ":":
        dims = [int(d) for d in size.split("x") if d]
        if len(dims) != gen["dims"] or min(dims) < 1:
            raise ValueError(f"{bad} ({generation} shapes have {gen['dims']} dimensions)")
        shape, chips = size, math.prod(dims)
    else:
        count = int(size) if size.isdigit() else -1
        # v4, v5p and tpu7x names count TensorCores, two per chip.
        chips = count // gen["cores"]
        shapes = SHAPES_3D if gen["dims"] == 3 else SHAPES_2D
        if chips not in shapes or count % gen["cores"]:
            raise ValueError(bad)
        shape = shapes[chips]
    topology_name = f"{gen['prefix']}:{shape}"
    return Topology(name, generation, topology_name, chips, gen["hbm"], gen["devices"])


def topology_devices(topology: Topology, num_slices: int = 1) -> list:
    """The abstract TPU devices of `num_slices` slices of `topology` (needs libtpu, not a TPU)."""
    if topology.generation == "cpu":
        return jax.devices("cpu")
    if importlib.util.find_spec("libtpu") is None:
        raise run_setup.SetupError(
            "libtpu is not installed; the compile check needs it: pip install 'bert_jax[tpu]' "
            "(or pip install 'jax[tpu]')"
        )
    # No TPU is attached: let several compile checks (or test workers) load libtpu at once, and do not ask
    # the TPU VM metadata server (absent here) who the workers are.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    from jax.experimental import topologies  # noqa: PLC0415 (imports libtpu's plugin)

    kwargs = (
        {"chip_config_name": "megacore"} if GENERATIONS[topology.generation]["megacore"] else {}
    )
    if num_slices > 1:
        kwargs["num_slices"] = num_slices
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=topology.topology_name, **kwargs
    )
    return list(desc.devices)

"""Device mesh, logical-axis rules, and the shardings of parameters and batches.

The model names every parameter dimension with a logical axis (`bert_jax.models.bert`); `LOGICAL_AXIS_RULES` maps
those names onto the three mesh axes `data` (pure data parallelism), `fsdp` (data parallelism with parameters
and optimizer state sharded, ZeRO-3 style) and `tensor` (Megatron-style tensor parallelism). The trainer uses
these to create the train state already sharded and to turn per-host NumPy batches into global arrays.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Flax assigns mesh axes by priority: rules are tried in order and a mesh axis already used by an earlier
# dimension of the same array is skipped. So `batch` must come first: an activation ("batch", "length",
# "embed") then takes data+fsdp for the batch and leaves embed replicated (one mesh axis cannot shard two
# dimensions), while a parameter, which has no batch dimension, gets its embed dimension sharded over fsdp.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),  # examples split over every data-parallel device
    ("embed", "fsdp"),  # hidden dimension of every weight: the ZeRO-3 shard, gathered per layer
    ("vocab", "tensor"),  # word embeddings / MLM decoder: the largest matrix, split by rows
    ("heads", "tensor"),  # attention heads: Megatron column split of Q/K/V, row split of the output
    (
        "mlp",
        "tensor",
    ),  # feed-forward inner dimension: column then row split, one all-reduce per block
    ("embed_out", "tensor"),  # output side of hidden->hidden denses (pooler, MLM transform)
    ("kv", None),  # per-head dimension (64): heads are the unit of tensor parallelism
    ("position", None),  # 512 positions: small, and gathered by every example anyway
    ("token_type", None),  # 2 segment rows
    ("classes", None),  # 1-3 labels: too small to split
    ("layers", None),  # the stacked layer axis of `scan_layers`: every device runs every layer
    ("length", None),  # sequence parallelism is not used; BERT's 512 tokens fit on one device
)


def _resolve_shape(mesh_shape: Sequence[int], count: int, what: str = "mesh_shape") -> list[int]:
    """`mesh_shape` with its -1 replaced so that it multiplies to `count`; one-line ValueError otherwise."""
    shape = [int(s) for s in mesh_shape]
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"{what} {tuple(shape)} must have 3 entries for axes {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"{what} {tuple(shape)}: sizes must be positive, with at most one -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if count % known:
            raise ValueError(
                f"{what} {tuple(shape)} does not fit {count} devices: {count} is not divisible by {known}"
            )
        shape[shape.index(-1)] = count // known
    if math.prod(shape) != count:
        raise ValueError(
            f"{what} {tuple(shape)} needs {math.prod(shape)} devices but there are {count}"
        )
    return shape


def make_mesh(mesh_shape: Sequence[int], devices=None, dcn_mesh_shape=None) -> Mesh:
    """A mesh with axes ("data", "fsdp", "tensor") of `mesh_shape`; one entry may be -1 ("the rest").

    `devices` defaults to all devices (over every process); on TPU the order follows the physical topology.
    With `dcn_mesh_shape` (multi-slice), `mesh_shape` is the mesh inside one slice and `dcn_mesh_shape` the
    mesh of slices over the data-center network; each axis of the result is their product, slices outermost
    (e.g. dcn (2, 1, 1) x ici (1, 16, 1) = data 2 across slices, fsdp 16 inside each). `None` or all ones
    means one slice. Raises a one-line ValueError if a shape does not multiply to the devices it covers.
    """
    all_devices = list(jax.devices() if devices is None else np.asarray(devices).ravel())
    count = len(all_devices)
    # Auto axes: the compiler propagates shardings from the jit in/out shardings and the constraints at
    # block boundaries (JAX's newer default, Explicit, would make every op's output sharding a typing rule).
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if dcn_mesh_shape is not None and math.prod(int(s) for s in dcn_mesh_shape) != 1:
        slices = len({getattr(d, "slice_index", 0) for d in all_devices})
        dcn = _resolve_shape(dcn_mesh_shape, slices, "dcn_mesh_shape")
        ici = _resolve_shape(mesh_shape, count // slices)
        from jax.experimental import mesh_utils  # noqa: PLC0415 (only multi-slice runs need it)

        grid = mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices=all_devices, allow_split_physical_axes=True
        )
        return Mesh(grid, MESH_AXES, axis_types=axis_types)
    shape = _resolve_shape(mesh_shape, count)
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=axis_types, devices=all_devices)


@contextlib.contextmanager
def logical_rules(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Inside it, `nn.with_logical_constraint` and logically boxed parameters constrain onto `mesh`.

    Usable inside a function being traced by `jax.jit` (it sets the abstract mesh, not the concrete one), so
    the constraints at the model's block boundaries become real `sharding_constraint`s instead of no-ops.
    """
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield


def under_mesh(fn, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """`fn` traced under `logical_rules(mesh)`: what every step passes to `jax.jit`."""

    @functools.wraps(fn)
    def traced_under_mesh(*args, **kwargs):
        with logical_rules(mesh, rules):
            return fn(*args, **kwargs)

    # The compiled module keeps the step's own name (jit_train_step), which profiles and HLO dumps are found by;
    # a functools.partial has no name of its own, so take its function's.
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", None)
    if name:
        traced_under_mesh.__name__ = traced_under_mesh.__qualname__ = name
    return traced_under_mesh


def _divisible_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide their dimension (JAX rejects uneven shardings).

    E.g. BERT's 30522-row vocabulary over tensor=4 is replicated instead; for a tuple of mesh axes the
    longest prefix that divides the dimension is kept.
    """
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        while names and dim % math.prod(mesh.shape[a] for a in names):
            names = names[:-1]
        out.append(None if not names else names[0] if len(names) == 1 else names)
    return PartitionSpec(*out)


def logical_shardings(boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for a tree of `nn.LogicallyPartitioned` boxes (real or from `jax.eval_shape`).

    The result has the structure of the unboxed tree; unboxed leaves are replicated. A mesh axis that does
    not divide a dimension is dropped from that dimension (logged), rather than failing at compile time.
    """
    specs = nn.get_partition_spec(boxed_tree)  # logical names, boxes stripped
    shapes = jax.tree.map(lambda x: x.shape, nn.unbox(boxed_tree))
    is_spec = lambda x: isinstance(x, PartitionSpec)

    def one(path, logical, shape):
        mesh_axes = nn.logical_to_mesh_axes(tuple(logical), rules)
        spec = _divisible_spec(mesh_axes, shape, mesh)
        if spec != PartitionSpec(*mesh_axes):
            logging.info(
                "%s %s: %s does not divide, using %s",
                jax.tree_util.keystr(path),
                shape,
                mesh_axes,
                spec,
            )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, specs, shapes, is_leaf=is_spec)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ("data", "fsdp"); everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_divisible(global_batch_size: int, mesh: Mesh, process_count: int) -> None:
    """Raises a one-line ValueError unless the global batch splits evenly over processes and batch shards."""
    shards = batch_shards(mesh)
    if global_batch_size % shards:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by the {shards} batch shards "
            f"of the mesh (data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})"
        )
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by {process_count} processes"
        )


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's share of a global batch (NumPy) -> global `jax.Array`s sharded by `batch_sharding`.

    Every process passes its own rows (same local batch size on every process); the global batch is their
    concatenation in process order. Works the same on one host and on a pod.
    """
    sharding = batch_sharding(mesh)
    sizes = {k: np.shape(v)[0] for k, v in batch.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch features have different leading sizes: {sizes}")
    local = next(iter(sizes.values()))
    check_batch_divisible(local * jax.process_count(), mesh, jax.process_count())

    def one(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return {k: one(v) for k, v in batch.items()}


def prefetch_to_device(items, mesh: Mesh, size: int = 2, batch=lambda item: item):
    """Yields (item, global batch) for each item of `items`, `size` items ahead of the consumer.

    `batch(item)` is the item's host batch (NumPy), e.g. `lambda item: item[1]` for the pretraining loader's
    (step, batch) pairs. `host_to_global` only starts the host-to-device copies; keeping `size` batches in
    flight lets a batch's copy overlap the steps before it, so the training loop never waits for its input
    (the usual 2-deep device buffer of TPU/GPU input pipelines). Closing this generator does not close `items`.
    """
    iterator = iter(items)
    buffer = collections.deque()
    done = object()

    def fill():
        while len(buffer) < size:
            item = next(iterator, done)
            if item is done:
                return
            buffer.append((item, host_to_global(batch(item), mesh)))

    fill()
    while buffer:
        item = buffer.popleft()
        fill()
        yield item

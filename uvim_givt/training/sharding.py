"""Device mesh and shardings: data parallel by default, FSDP of parameters as an option.

One mesh axis, ``data``, over every device of every host. Batches are split
along it. Parameters are replicated, or with FSDP each large parameter is split
along its largest axis divisible by the number of devices (ZeRO-3 style; XLA
inserts the all-gathers). Multi-host runs start ``jax.distributed`` when the
usual environment says so (a coordinator address, SLURM with several tasks,
or a multi-host TPU slice). Processes started by hand name their place with
``JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=P JAX_PROCESS_ID=p``
(CPU processes exchange data with gloo, JAX's default CPU collectives);
``tests/test_multihost.py`` runs two such processes on one machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from uvim_givt.errors import ConfigError

DATA_AXIS = "data"
_distributed_started = False


def maybe_initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize()`` once when running on several hosts."""
    global _distributed_started
    if _distributed_started:
        return
    env = os.environ
    multi = (
        "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("JAX_NUM_PROCESSES", "1")) > 1
        or "TPU_WORKER_HOSTNAMES" in env and "," in env.get("TPU_WORKER_HOSTNAMES", "")
    )
    if multi and not jax.distributed.is_initialized():
        jax.distributed.initialize(**_explicit_process_env(env))
    _distributed_started = True


def _explicit_process_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``initialize`` arguments from JAX_NUM_PROCESSES / JAX_PROCESS_ID (JAX itself reads
    only the coordinator address); empty where a cluster's auto-detection should fill in."""
    kw: dict[str, Any] = {}
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if env.get(name, "") != "":
            try:
                kw[key] = int(env[name])
            except ValueError:
                raise ConfigError(f"environment {name}={env[name]!r}: expected an integer") \
                    from None
    if "JAX_NUM_PROCESSES" in env and "JAX_PROCESS_ID" not in env:
        raise ConfigError("environment JAX_NUM_PROCESSES is set but JAX_PROCESS_ID is not: "
                          "name each process's index (0 .. JAX_NUM_PROCESSES-1)")
    if "process_id" in kw and not 0 <= kw["process_id"] < kw.get("num_processes", 1 << 30):
        raise ConfigError(f"environment JAX_PROCESS_ID={kw['process_id']} is outside "
                          f"0..{kw['num_processes'] - 1}")
    return kw


def is_primary() -> bool:
    """True in the one process that writes a run's shared files (process 0)."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-process run (nothing with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def make_mesh() -> Mesh:
    """A 1-d mesh over all devices (all hosts)."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def fsdp_spec(shape: tuple[int, ...], n: int, min_size: int = 2**14) -> PartitionSpec:
    """Splits the largest axis divisible by ``n``; small arrays stay replicated."""
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % n == 0:
            spec = [None] * len(shape)
            spec[axis] = DATA_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


def tree_shardings(tree: Any, mesh: Mesh, fsdp: bool) -> Any:
    """Shardings for a pytree of arrays/ShapeDtypeStructs (params or optimizer state)."""
    n = mesh.devices.size

    def one(x):
        shape = tuple(getattr(x, "shape", ()))
        spec = fsdp_spec(shape, n) if fsdp else PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map(one, tree)


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles host-local batches into global arrays split along ``data``."""
    sharding = batch_sharding(mesh)
    n_local = len(mesh.local_devices)

    def one(x):
        x = np.asarray(x)
        if x.shape[0] % n_local:
            raise ValueError(
                f"per-host batch of {x.shape[0]} does not split over {n_local} local devices; "
                "choose a batch size divisible by the number of devices")
        return jax.make_array_from_process_local_data(sharding, x)

    return {k: one(v) for k, v in batch.items()}

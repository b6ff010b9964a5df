"""Devices: one `Mesh` with the axes ("population", "data"), and where every array lives.

    params, optimizer state, rng, step   [S, ...]     members split over "population",
                                                      replicated over "data"
    carries                              [S, B, H]    members over "population", rows over "data"
    batches                              [B, T]       rows over "data" (every member reads them)
    metrics and scores                   [S]          members over "population"

The member axis S exists for populations of two or more members; a single run's arrays
have none (a vmap over one member costs about half again as much per step on a CPU). One
device is a 1×1 mesh: the same jitted steps with the same shardings, not another code path.

Data parallel needs nothing else: with the batch split by rows, XLA computes the loss of
the global batch and inserts the all-reduce of its gradient itself. Random bits do not
depend on the layout (partitionable threefry), so dropout masks are those of one device.

Several processes (`jax.distributed`) see one global mesh; each feeds only the rows and
members that its own devices hold (`put`), and `fetch` gathers whole arrays back.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_lm.config import ConfigError

AXES = ("population", "data")


class MeshError(ConfigError):
    """The devices cannot be laid out as the config asks; the message says why."""


def mesh_shape(population: int, data: int, num_devices: int,
               members: int | None = None) -> tuple[int, int]:
    """(population, data) with 0 read as "all remaining devices" (for the population axis:
    as many of them as divide `members`, when given); checked against the count."""
    if population < 0 or data < 0:
        raise MeshError(f"mesh.population and mesh.data must be ≥ 0, got {population} and {data}")
    if population == 0 and data == 0:
        raise MeshError("mesh.population=0 and mesh.data=0: at most one axis can take "
                        "'all remaining devices'")
    if population == 0:
        population = max(1, num_devices // data)
        if members:
            population = max(p for p in range(1, population + 1) if members % p == 0)
    if data == 0:
        data = max(1, num_devices // population)
    if population * data > num_devices:
        raise MeshError(f"a mesh of mesh.population={population} × mesh.data={data} needs "
                        f"{population * data} devices, but there are {num_devices} "
                        f"({describe_devices()})")
    return population, data


def make_mesh(population: int = 1, data: int = 1,
              devices: Sequence[jax.Device] | None = None, members: int | None = None) -> Mesh:
    """A (population × data) mesh over the first devices (process by process, so a
    data-parallel group stays within a host where it can); `members`: see `mesh_shape`."""
    devices = list(jax.devices() if devices is None else devices)
    population, data = mesh_shape(population, data, len(devices), members)
    grid = np.array(devices[: population * data], dtype=object).reshape(population, data)
    return Mesh(grid, AXES)


def cluster_environment() -> str | None:
    """What says this process is one of several (for `jax.distributed.initialize()` to
    read): a SLURM job of several tasks, a multi-host TPU slice, JAX_COORDINATOR_ADDRESS."""
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return "SLURM"
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return "a multi-host TPU slice"
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    return None


def join_processes(coordinator: str | None = None, num_processes: int | None = None,
                   process_id: int | None = None) -> bool:
    """Join a multi-process run (`jax.distributed.initialize`) before JAX starts its backends.

    With all three arguments, joins the run that `coordinator` (HOST:PORT, process 0's
    address) coordinates; with none, joins when `cluster_environment()` finds a cluster
    (JAX reads the rest from it), and otherwise stays a single process (returns False).
    CPU processes exchange gradients through gloo.
    """
    given = (coordinator, num_processes, process_id)
    if all(v is None for v in given):
        if cluster_environment() is None:
            return False
    elif any(v is None for v in given):
        raise MeshError("--coordinator, --num-processes and --process-id go together (give "
                        "all three, or none inside SLURM or on a TPU slice)")
    elif not 0 <= process_id < num_processes:
        raise MeshError(f"--process-id {process_id} must be in [0, {num_processes})")
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # a JAX without the option: its default
        pass
    where = coordinator or cluster_environment()
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except Exception as e:  # noqa: BLE001 - any failure to join is one sentence
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MeshError(f"could not join the processes of this run through {where}: {first}") \
            from None
    return True


def describe_devices() -> str:
    """'4 cpu devices in 1 process', for messages and the run summary."""
    n, kind, procs = jax.device_count(), jax.devices()[0].platform, jax.process_count()
    return f"{n} {kind} device{'s' * (n > 1)} in {procs} process{'es' * (procs > 1)}"


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the arrays of a run of `members` members live on `mesh` (module docstring)."""

    mesh: Mesh
    members: int = 1

    def __post_init__(self):
        size = self.mesh.shape["population"]
        if self.members % size:
            what = ("a single run" if self.members == 1 else f"a population of {self.members}")
            raise MeshError(f"mesh.population={size} must divide the number of members, but "
                            f"this is {what}; set mesh.population to a divisor of "
                            f"{self.members}")

    @property
    def data_size(self) -> int:
        return self.mesh.shape["data"]

    def spec(self, *rest: str | None) -> NamedSharding:
        """The sharding of an array whose axes after the member axis are split as `rest`."""
        lead = ("population",) if self.members > 1 else ()
        return NamedSharding(self.mesh, PartitionSpec(*lead, *rest))

    @property
    def member(self) -> NamedSharding:
        """Per-member values (params, optimizer state, rng, metrics): split by member."""
        return self.spec()

    @property
    def rows(self) -> NamedSharding:
        """Per-row values of every member (carries [S, B, ·]): members and rows split."""
        return self.spec("data")

    @property
    def batch(self) -> NamedSharding:
        """Batches [B, ·], shared by the members: rows split over "data"."""
        return NamedSharding(self.mesh, PartitionSpec("data"))

    def state(self, state) -> Any:
        """Shardings for a `train.TrainState` (same structure)."""
        shard = lambda tree, s: jax.tree.map(lambda _: s, tree)  # noqa: E731
        return type(state)(step=self.member, params=shard(state.params, self.member),
                           opt_state=shard(state.opt_state, self.member), rng=self.member,
                           carry=shard(state.carry, self.rows))

    def check_rows(self, what: str, rows: int) -> None:
        if rows % self.data_size:
            raise MeshError(f"{what}={rows} must be a multiple of mesh.data={self.data_size} "
                            "(each device of the data axis takes an equal share of the rows)")

    # ------------------------------------------------------------------ host <-> devices

    def put(self, tree, shardings) -> Any:
        """Host (or single-device) arrays laid out as `shardings` (a sharding or a tree).

        With several processes every process passes the same whole values and transfers
        only the pieces that its own devices hold.
        """
        if isinstance(shardings, jax.sharding.Sharding):
            shardings = jax.tree.map(lambda _: shardings, tree)
        if jax.process_count() == 1:
            return jax.device_put(tree, shardings)

        def one(x, sharding):
            if _is_key(x):
                data = np.asarray(jax.random.key_data(x))
                return jax.random.wrap_key_data(one(data, sharding),
                                                impl=jax.random.key_impl(x))
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree.map(one, tree, shardings)

    def fetch(self, tree) -> Any:
        """Whole arrays as NumPy on every process (key arrays as their key data)."""
        tree = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)
        if jax.process_count() == 1:
            return jax.device_get(tree)
        return multihost_utils.process_allgather(tree, tiled=True)

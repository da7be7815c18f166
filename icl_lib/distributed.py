"""One run over several processes, launched by ``torchrun``: data parallelism with an
all-reduce of gradients.

``torchrun --nproc_per_node=N -m icl_lib.train CONFIG --out DIR`` starts N processes
whose environment names the world (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). :func:`world` reads and checks it: without those
variables, or with ``WORLD_SIZE=1``, a run is one process (:data:`ONE`) and nothing here
acts. Otherwise every rank draws the config's whole batch from the run's stream (same
generator, same seed) and keeps its rows (:meth:`World.keep`), then the gradients and
the loss are averaged over the ranks (:meth:`World.average_gradients`): slices of equal
size, so the average of their means is the global batch's mean, and the ranks together
see exactly the examples one process would, which makes a run independent of its world
size up to float rounding. Every rank starts from the same seeds and applies the same
averaged gradients, so the models stay identical without a broadcast; only rank 0 writes
the run directory (:attr:`World.writes`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from icl_lib import checks
from icl_lib.devices import parse_device, resolve_device

BACKENDS = ("auto", "nccl", "gloo")  # auto: NCCL on CUDA, gloo on the CPU
LAUNCH = "launch with torchrun --nproc_per_node=N -m icl_lib.train CONFIG --out DIR"


@dataclass(frozen=True)
class World:
    """The processes of a run: this one's ``rank`` among ``size``, its ``device`` and
    the ``backend`` (None: one process, no process group)."""

    rank: int = 0
    size: int = 1
    device: torch.device | None = None
    backend: str | None = None

    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory (rank 0) and prints."""
        return self.rank == 0

    def keep(
        self, xs: torch.Tensor, ys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the global batch ``xs: (B, n, d)``, ``ys: (B, n)``: ``(B
        / size, ...)`` views, the tensors themselves in one process."""
        if self.size == 1:
            return xs, ys
        rows = xs.shape[0] // self.size
        return xs[self.rank * rows : (self.rank + 1) * rows], ys[
            self.rank * rows : (self.rank + 1) * rows
        ]

    def average_gradients(
        self, parameters: list[torch.Tensor], loss: torch.Tensor
    ) -> torch.Tensor:
        """Replace each parameter's gradient by its mean over the ranks and return the
        mean of ``loss`` (0-dim, this rank's batch mean): one all-reduce of a flat
        buffer. In one process, ``loss`` itself and nothing else."""
        if self.size == 1:
            return loss
        # the same on every rank: the same graph
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat(
            [g.reshape(-1).float() for g in grads] + [loss.float().reshape(1)]
        )  # (n_params + 1,)
        torch.distributed.all_reduce(flat)  # a sum: gloo has no average
        flat.div_(self.size)
        for grad, mean in zip(grads, flat[:-1].split([g.numel() for g in grads])):
            grad.copy_(mean.view_as(grad))
        return flat[-1]


ONE = World()


def world(
    config: Any, backend: str = "auto", env: Mapping[str, str] | None = None
) -> World:
    """The world torchrun's variables in ``env`` (default ``os.environ``) describe for a
    run of ``config`` (a :class:`~icl_lib.config.TrainConfig`), checked: :data:`ONE`
    without them or with ``WORLD_SIZE=1``; ``ValueError`` naming the fix for a world the
    run cannot use (a size that does not divide ``batch_size``, an explicit ``cuda:N``,
    too few GPUs, a backend that is not available, a CUDA graph, or dropout, whose masks
    would depend on the world size)."""
    env = os.environ if env is None else env
    batch_size, device, dropout = (
        config.batch_size,
        config.device,
        float(config.model.get("dropout", 0.0) or 0.0),
    )
    checks.choice("backend", backend, BACKENDS)
    size = _env_int(env, "WORLD_SIZE", 1)
    if size == 1:
        return ONE
    rank, local_rank = _env_int(env, "RANK", None), _env_int(env, "LOCAL_RANK", None)
    if not 0 <= rank < size:
        raise ValueError(
            f"RANK must lie in [0, WORLD_SIZE = {size}), got {rank}; {LAUNCH}"
        )
    if batch_size % size:
        raise ValueError(
            f"batch_size = {batch_size} must be divisible by the world size {size} "
            "(each process trains on an equal slice); choose --nproc_per_node among "
            f"the divisors of {batch_size}"
        )
    if config.cuda_graph:
        raise ValueError(
            f"cuda_graph = true trains one process only, got a world of {size} "
            "(torchrun); set cuda_graph = false"
        )
    if dropout > 0:
        raise ValueError(
            f"model.dropout = {dropout} draws its masks per process, so a run over "
            f"{size} processes would differ from one process's; set dropout = 0 to "
            "train with torchrun"
        )
    parsed = parse_device(device)
    if parsed is not None and parsed.index is not None:
        raise ValueError(
            f"device = {device!r} names one GPU, but torchrun started {size} "
            "processes; use 'cuda' (each process trains on the GPU of its LOCAL_RANK)"
        )
    placed = resolve_device(device)
    if placed.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK = {local_rank} but this machine has "
                f"{torch.cuda.device_count()} GPU(s); start at most that many "
                "processes per node (--nproc_per_node)"
            )
        placed = torch.device("cuda", local_rank)
    if backend == "auto":
        backend = "nccl" if placed.type == "cuda" else "gloo"
    if (
        not torch.distributed.is_available()
        or not getattr(torch.distributed, f"is_{backend}_available")()
    ):
        raise ValueError(
            f"backend {backend!r} is not available in this torch build; use --backend "
            f"{'gloo' if backend == 'nccl' else 'nccl'} (or auto: NCCL on CUDA, gloo "
            "on the CPU)"
        )
    if backend == "nccl" and placed.type != "cuda":
        raise ValueError(
            "backend 'nccl' needs CUDA devices, got device = 'cpu'; use --backend gloo "
            "(or auto)"
        )
    return World(rank=rank, size=size, device=placed, backend=backend)


def _env_int(env: Mapping[str, str], name: str, default: int | None) -> int:
    value = env.get(name)
    if value is None and default is not None:
        return default
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = -1
    if number < 0 or (name == "WORLD_SIZE" and number < 1):
        raise ValueError(
            f"{name} must be a "
            f"{'positive' if name == 'WORLD_SIZE' else 'non-negative'} integer, got "
            f"{value!r}; {LAUNCH}"
        )
    return number


def launcher(env: Mapping[str, str] | None = None) -> str:
    """How a command line that ``meta.json`` records starts: ``python -m
    icl_lib.train``, or under torchrun ``torchrun [--nnodes=M] --nproc_per_node=N -m
    icl_lib.train``."""
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE", "1") == "1":
        return "python -m icl_lib.train"
    size, per_node = env["WORLD_SIZE"], env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])
    several = size != per_node and size.isdigit() and per_node.isdigit()
    nodes = f"--nnodes={int(size) // int(per_node)} " if several else ""
    return f"torchrun {nodes}--nproc_per_node={per_node} -m icl_lib.train"


@contextlib.contextmanager
def process_group(world: World) -> Iterator[None]:
    """The process group of ``world`` (from torchrun's variables) for the ``with``
    block; nothing in one process. A group that the caller already started is used and
    left running."""
    if world.size == 1 or torch.distributed.is_initialized():
        yield
        return
    device_id = world.device if world.device.type == "cuda" else None
    torch.distributed.init_process_group(
        world.backend, rank=world.rank, world_size=world.size, device_id=device_id
    )
    try:
        yield
        # rank 0 writes the run's last files before any process leaves
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()

"""Data-parallel runs on several processes with ``torch.distributed``.

A command runs on several processes in one of two ways:

* launched by ``torchrun --nproc_per_node N -m glass_llm COMMAND ...`` (any number of
  nodes): every process finds the launcher's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group;
* with ``--nproc N`` on one machine: the command re-executes itself through
  ``torch.distributed.run`` (torchrun's own entry point, ``--standalone`` rendezvous),
  and each worker runs the same command with the same arguments.

Without a launcher the run is a single process and every collective is the identity,
so commands use the same code in both cases.

Backends: gloo for CPU runs, NCCL when the model sits on CUDA devices (process ``r``
uses ``cuda:LOCAL_RANK``). Failure handling: a process that fails prints its error and
exits with a non-zero status; torchrun then stops the other processes and exits
non-zero itself. As a second line of defence every collective has a finite timeout
(``--dist-timeout``, default :data:`DEFAULT_TIMEOUT_S` seconds), so a process that
stops answering without exiting makes the others fail instead of waiting forever.
The timeout must be longer than the slowest piece of work between two collectives
(one sampled batch when building a prior).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .errors import UserError
from .runner import run_command

DEFAULT_TIMEOUT_S = 1800.0
_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError, UserError):
    """A multi-process run cannot start or one of its processes failed."""


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process sits in a torchrun launch."""

    rank: int
    world: int
    local_rank: int
    local_world: int


def launch_info() -> LaunchInfo | None:
    """The torchrun environment of this process, or ``None`` when not launched by torchrun."""
    if not all(k in os.environ for k in _LAUNCH_ENV):
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        return LaunchInfo(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ["LOCAL_RANK"]),
                          local_world=int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    except ValueError as err:
        raise DistributedError(f"malformed torchrun environment: {err}") from None


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """The device of this process. ``cuda`` (or ``auto`` with CUDA present) means
    ``cuda:LOCAL_RANK``; an explicit ``cuda:K`` is kept as given."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(f"device {requested!r} was requested but CUDA is not available here")
        if device.index is None:
            if local_rank >= torch.cuda.device_count():
                raise DistributedError(
                    f"process with local rank {local_rank} needs cuda:{local_rank}, but only "
                    f"{torch.cuda.device_count()} CUDA device(s) are visible; use at most that many processes per node"
                )
            device = torch.device("cuda", local_rank)
    return device


class Distributed:
    """The processes of one run: rank, world size and the collectives commands need.

    With ``world == 1`` no process group exists and every collective is the identity.
    Use :func:`init` to create one; it is a context manager that tears the group down.
    """

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, device: torch.device | None = None,
                 backend: str | None = None):
        self.rank = rank
        self.world = world
        self.local_rank = local_rank
        self.device = device if device is not None else torch.device("cpu")
        self.backend = backend
        # NCCL moves CUDA tensors only; gloo works on CPU tensors.
        self.comm_device = self.device if backend == "nccl" else torch.device("cpu")

    def is_main(self) -> bool:
        """True on the process that writes files and prints summaries (rank 0)."""
        return self.rank == 0

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over all processes: a new tensor on the
        input's device and dtype (the input is left unchanged), or the input itself when
        there is one process."""
        if self.world == 1:
            return tensor
        buf = tensor.detach().to(self.comm_device, copy=True)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(tensor.device)

    def all_sum_count(self, count: int) -> int:
        """The sum of an integer (a token count, say) over all processes."""
        if self.world == 1:
            return int(count)
        return int(self.all_sum(torch.tensor([int(count)], dtype=torch.int64))[0])

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def all_gather_lists(self, items: list[Any]) -> list[Any]:
        """The concatenation, in rank order, of every process's list, on every process
        (the ``gather`` hook of ``glass_llm.evaluation.run_eval``)."""
        return [x for part in self.all_gather_objects(items) for x in part]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every process's ``obj`` in rank order on rank 0; ``None`` on the others."""
        if self.world == 1:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.is_main() else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        """Wait until every process gets here (bounded by the collective timeout)."""
        if self.world > 1:
            self.all_sum(torch.zeros(1))

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """Run the body on local rank 0 of each node first, then on the others: for work
        that fills a per-machine cache (converting a model, say) and must not race."""
        first = self.local_rank == 0
        if not first:
            self.barrier()
        yield
        if first:
            self.barrier()

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world} on {self.device}" + (f" ({self.backend})" if self.backend else "")


@contextlib.contextmanager
def init(device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Distributed]:
    """Join the process group of a torchrun launch (or make a single-process context).

    ``device``: ``cpu``, ``cuda`` (each process on ``cuda:LOCAL_RANK``), ``cuda:K`` or
    ``auto``. The backend is NCCL for CUDA devices and gloo otherwise. The group is
    destroyed when the block ends normally; when it raises, the group is left to the
    process exit, because tearing down a group whose peers sit in a collective can block.
    """
    if timeout_s <= 0:
        raise DistributedError(f"the collective timeout must be positive, got {timeout_s}")
    info = launch_info()
    if info is None or info.world == 1:
        local_rank = info.local_rank if info else 0
        yield Distributed(rank=0, world=1, local_rank=local_rank, device=resolve_device(device, local_rank))
        return
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed support")
    if dist.is_initialized():
        raise DistributedError("a torch.distributed process group is already initialised in this process")
    dev = resolve_device(device, info.local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    if dist.get_world_size() != info.world or dist.get_rank() != info.rank:
        raise DistributedError("the process group does not match the torchrun environment")
    ctx = Distributed(rank=info.rank, world=info.world, local_rank=info.local_rank, device=dev, backend=backend)
    yield ctx
    dist.destroy_process_group()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--nproc`` and ``--dist-timeout`` to a subcommand's parser."""
    parser.add_argument("--nproc", type=int, default=1,
                        help="run on N processes on this machine, launched through torchrun (default 1); "
                             "ignored when the command already runs under torchrun")
    parser.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"fail a multi-process run when a collective waits longer than this "
                             f"(default {DEFAULT_TIMEOUT_S:.0f})")


def should_launch(nproc: int) -> bool:
    """True when this process must start ``nproc`` workers (``nproc > 1``, not under torchrun)."""
    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1, got {nproc}")
    return nproc > 1 and launch_info() is None


def threads_per_process(nproc: int) -> int:
    """CPU threads for each of ``nproc`` processes sharing this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nproc)


def launch(args: argparse.Namespace, nproc: int) -> int:
    """Run the parsed command ``args`` (it must carry ``command`` and ``func``) on ``nproc``
    local processes through ``torch.distributed.run``; return the launcher's exit status.

    The workers get the very same arguments (passed as a pickle in a private temporary
    file). ``OMP_NUM_THREADS`` is set to the cores divided among the processes unless
    the environment already sets it.
    """
    fd, path = tempfile.mkstemp(prefix="glass-args-", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(args, fh)
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.5",
               "-m", "glass_llm.distributed", path]
        rc = subprocess.run(cmd, env=env, check=False).returncode
    finally:
        os.unlink(path)
    if rc != 0:
        print(f"glass {args.command}: error: the {nproc}-process run failed (exit status {rc}); "
              "the failing process's error is shown above", file=sys.stderr)
    return rc


def worker_main(argv: list[str]) -> int:
    """Entry point of one worker started by :func:`launch`: run the command whose
    arguments are pickled in ``argv[0]``. Errors are reported like the ``glass`` CLI does
    (``runner.run_command``), with the rank: one line and exit 2 for a user error, the
    traceback and exit 1 for an internal one."""
    if len(argv) != 1:
        print("usage: python -m glass_llm.distributed ARGS_FILE (started by `glass COMMAND --nproc N`)",
              file=sys.stderr)
        return 2
    with open(argv[0], "rb") as fh:
        args = pickle.load(fh)
    info = launch_info()
    return run_command(args, where=f" (rank {info.rank})" if info else "")


if __name__ == "__main__":
    from glass_llm.distributed import worker_main as _worker_main

    raise SystemExit(_worker_main(sys.argv[1:]))

"""Run a given function in N fresh processes that form one torch.distributed group.

This module starts processes and knows nothing of what they do: ``scrollseg.api``
hands it the training or prediction function. Workers are started with fork (spawn
where the platform has no fork) and meet on a free localhost port. Fork is what makes
this work inside a notebook, where spawn would have to re-import the notebook's
``__main__``; it requires that this process has not initialised CUDA yet.
torchrun (also multi-node) starts its own processes, which the trainer recognises
from their environment.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import sys
import traceback
from typing import Callable

import torch

from .errors import ScrollsegError


def resolve_devices(devices: int | str | None) -> int:
    """``"auto"``: every visible GPU (1 on a CPU-only machine); an int: that many processes."""
    if devices in (None, "auto"):
        return max(1, torch.cuda.device_count())
    try:
        n = int(devices)
    except (TypeError, ValueError):
        raise ScrollsegError(f"--devices {devices!r}: give a number of processes or 'auto'") from None
    if n < 1:
        raise ScrollsegError(f"--devices {n}: need at least one process")
    if torch.cuda.is_available() and n > torch.cuda.device_count():
        raise ScrollsegError(f"--devices {n}: only {torch.cuda.device_count()} GPU(s) are visible")
    return n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results, fn: Callable, args: tuple) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        results.put((rank, fn(*args)))
    except ScrollsegError as exc:
        sys.stderr.write(f"error (rank {rank}): {exc}\n")  # one write, so ranks never splice lines
        sys.stderr.flush()
        os._exit(exc.exit_code)
    except BaseException:
        traceback.print_exc()
        os._exit(1)


def run_processes(fn: Callable, args: tuple, nprocs: int):
    """Run ``fn(*args)`` in ``nprocs`` fresh ranks; returns rank 0's result."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise ScrollsegError(
            "CUDA is already initialised in this process, so worker processes cannot be forked from it; "
            "restart the kernel and start training before anything else touches the GPU"
        )
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    results = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, nprocs, port, results, fn, args), daemon=False) for r in range(nprocs)]
    for p in procs:
        p.start()

    def forward(signum, _frame):  # a stop request reaches every rank, which checkpoints
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signum)

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread
        previous.clear()
    try:
        failed = None
        while any(p.is_alive() for p in procs) and failed is None:
            for p in procs:
                p.join(timeout=0.2)
                if p.exitcode not in (None, 0):
                    failed = p
                    break
        if failed is not None:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join()
            code = failed.exitcode
            err = ScrollsegError(f"worker process {procs.index(failed)} of {nprocs} failed (exit code {code}); its message is above")
            err.exit_code = code if isinstance(code, int) and code > 0 else 1
            raise err
        out = {}
        while not results.empty():
            rank, value = results.get()
            out[rank] = value
        return out.get(0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

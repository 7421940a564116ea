"""The sweep runner on a Ray cluster: one task per chunk, retried on failure.

The driver plans the sweep exactly as :func:`search.runner.run_sweep` does (same chunk
ids, same manifest), then submits one Ray task per unfinished chunk. Each task rebuilds
the chunk on its node, simulates it on that node's local devices (sharded over them
when B divides evenly) and writes ``chunk-NNNNNN.parquet`` atomically into the same
results folder, so a Ray sweep and a local sweep of the same space produce the same
dataset and either can resume the other. Tasks that fail (an exception, or a worker or
node that dies) are retried by Ray up to ``max_retries`` times.

The results folder must be visible to every node under the same path (a shared
filesystem) when the cluster has more than one machine. Compiled executables are kept
per node, in the folder ``jaxsim.cli.use_compile_cache`` picks there.

Ray is optional: ``pip install 'jaxsim[ray]'``. ``address="local"`` starts a Ray instance
on this machine (what the tests do).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

from search import runner
from search.space import DesignSpace


def _chunk_task(space: DesignSpace, plan: runner.Plan, c: int, out_dir: str,
                max_iterations: int | None, fail_once: str | None) -> tuple[int, int, float]:
    """Body of one Ray task (importable, so tests can call it directly)."""
    import jax

    from jaxsim import cli

    # Ray's workers do not share the driver's JAX settings: each keeps compiled
    # executables in its own node's cache folder, as the command line does, so a retried
    # task or a worker that Ray starts afresh loads the chunk function instead of
    # compiling it again.
    cli.use_compile_cache()
    if fail_once is not None and not os.path.exists(fail_once):
        with open(fail_once, "w") as f:
            f.write(str(c))
        raise RuntimeError(f"injected failure of chunk {c} (first attempt)")
    n_dev = len(jax.local_devices())
    local = dataclasses.replace(plan, num_devices=n_dev if plan.chunk_size % n_dev == 0
                                else 1)
    n, sim_s = runner.run_chunk(space, local, c, out_dir, max_iterations=max_iterations)
    return c, n, sim_s


CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """Raise ``ConnectionError`` when ``address`` names a host and port that do not
    accept a TCP connection within :data:`CONNECT_TIMEOUT_S`: ``ray.init`` itself keeps
    retrying an unreachable cluster for minutes. ``auto`` and other forms without a port
    are left to Ray."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConnectionError(f"nothing accepts connections at {host}:{port} "
                              f"({e.strerror or type(e).__name__})") from None


def run_sweep(space: DesignSpace, out_dir: str, address: str = "local", resume: bool = False,
              chunk_size: int | None = None, slots: int | None = None,
              chunk_iterations: int = 256, progress: bool = True,
              max_chunks: int | None = None, max_iterations: int | None = None,
              max_retries: int = 3, cpus_per_task: float | None = None,
              gpus_per_task: float = 0.0, _fail_once: str | None = None
              ) -> runner.SweepResult:
    """:func:`search.runner.run_sweep` with chunks as Ray tasks.

    Args:
        address: a Ray cluster address (``auto``, ``ray://host:port``), or ``local`` to
            start a Ray instance on this machine.
        max_retries: retries per task (exceptions and lost workers).
        cpus_per_task, gpus_per_task: Ray resources per task (default: a whole local
            machine's CPUs per task without GPUs, so a node runs one chunk at a time
            with all its cores; set ``gpus_per_task=1`` on GPU nodes).
        Other arguments: as :func:`search.runner.run_sweep`.
    """
    try:
        import ray
    except ImportError:
        raise runner.SweepError("--ray: Ray is not installed; pip install 'jaxsim[ray]'") \
            from None
    t0 = time.perf_counter()
    runner.check_sweep_args(out_dir, max_chunks)
    plan = runner.make_plan(space, chunk_size=chunk_size, slots=slots,
                            chunk_iterations=chunk_iterations)
    new_dir = not os.path.exists(out_dir)
    manifest = os.path.join(out_dir, runner.MANIFEST)
    new_manifest = not os.path.exists(manifest)
    runner.make_out_dir(out_dir)
    runner._check_manifest(out_dir, runner._manifest(space, plan), resume)
    done = runner.resumable_chunks(out_dir, plan)
    todo = [c for c in range(plan.num_chunks) if c not in done]
    if max_chunks is not None:
        todo = todo[:max_chunks]
    started_here = False
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            else:
                _check_reachable(address)
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as e:  # no cluster there, a refused connection, ...
            if new_manifest and not runner.finished_chunks(out_dir):
                os.unlink(manifest)  # nothing ran: leave nothing that would bind a rerun
                if new_dir and not os.listdir(out_dir):
                    os.rmdir(out_dir)
            raise runner.SweepError(f"--ray {address}: Ray could not start or connect: "
                                    f"{type(e).__name__}: {str(e).strip().splitlines()[0]}; "
                                    "give a running cluster's address, or 'local'") from None
        started_here = True
    try:
        cpus = cpus_per_task if cpus_per_task is not None else (
            1 if gpus_per_task else max(1, int(ray.cluster_resources().get("CPU", 1))
                                        // max(1, len(ray.nodes()))))
        # a lost worker is always retried; of the exceptions, the ones a retry can cure
        # (bad input, a ValueError, fails the same way on every attempt)
        task = ray.remote(num_cpus=cpus, num_gpus=gpus_per_task, max_retries=max_retries,
                          retry_exceptions=[RuntimeError, OSError, MemoryError])(_chunk_task)
        already = sum(len(runner.chunk_ids(plan, c)) for c in done if c < plan.num_chunks)
        bar = runner.Progress(plan.size, already, enabled=progress)
        space_ref = ray.put(space)
        pending = [task.remote(space_ref, plan, c, out_dir, max_iterations, _fail_once)
                   for c in todo]
        sim_s = 0.0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                c, n, s = ray.get(ready[0])
            except ray.exceptions.RayError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, ValueError):  # bad input: its own one-line message
                    raise runner.SweepError(str(cause)) from None
                raise runner.SweepError(f"a chunk failed after {max_retries} retries: "
                                        f"{e}") from None
            sim_s += s
            bar.update(n, c, plan.num_chunks)
    finally:
        if started_here:
            ray.shutdown()
    return runner.SweepResult(out_dir=out_dir, plan=plan, chunks_run=todo,
                              chunks_skipped=sorted(done), wall_s=time.perf_counter() - t0,
                              sim_s=sim_s, compiles=0)

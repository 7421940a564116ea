"""Data-parallel replicas behind a static router (docs/semantics.md §7).

A configuration with ``num_replicas: N`` serves its workload on N identical instances
(each ``tp`` GPUs). The router sends every request to one replica when it arrives, by a
rule that does not look at the replicas' load:

- ``round_robin``: the j-th request in arrival order goes to replica ``j mod N`` (the
  vLLM production stack's and a Kubernetes Service's round robin);
- ``random``: each request to a replica drawn uniformly, from the configuration's seed
  (a random load balancer; a Poisson stream splits into N Poisson streams);
- ``prefix_hash``: the replica is a hash of the request's first block id (its first
  ``hash_block_tokens`` tokens, ``Trace.hash_ids``), so requests that share a first block
  (a system prompt, the turns of one conversation) go to the same replica and find their
  prefix in its cache, as a consistent-hash or session-affinity router keyed by the
  prompt's start does; requests without block ids go round robin among themselves.

With a static router the replicas do not interact, so each replica is an ordinary lane
with its share of the trace, and the configuration's metrics are computed over the
union of its replicas' requests by :func:`merge_states` (the same definitions as one
lane's, ``jaxsim.metrics``). Routers that read the replicas' state (least loaded,
KV-cache aware, prefix-aware with a fallback to the least loaded) are not modelled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np

from jaxsim import metrics as metrics_mod
from jaxsim.workload import Trace, Workload

ROUTERS = ("round_robin", "random", "prefix_hash")

#: How each ``SimState`` field of the replicas becomes the fleet's: per-request arrays
#: are put back in the whole trace's arrival order; counters and (hi, lo) sums add up;
#: peaks take the largest (the clock: the largest replica clock, each on its own share's
#: time base, which starts at its first arrival; no metric reads it); status bits are
#: or-ed; the slot table and the prefix cache's table are one replica's internal state
#: and keep the first lane's. Counter sums saturate at 2**31 - 1 (int32).
PER_REQUEST = ("ttft_s", "decode_s", "queue_s", "preemptions", "tokens_scheduled",
               "completed", "load_s")
SUM_INT = ("ptr", "n_run", "n_act", "iterations", "steps", "tokens_total",
           "preemptions_total", "num_completed", "swap_used", "swaps_total",
           "prefetched_total", "spec_drafted", "spec_accepted", "cptr")
SUM_DD = ("busy", "kv_used_s", "adm_tok", "xfer_exposed", "xfer_hidden", "hit_tok", "read",
          "write")
MAX = ("clock", "start", "kv_peak_blocks", "peak_entries", "iter_limit")
OR = ("status",)
FIRST = ("slot_req", "slot_prompt", "slot_output", "slot_computed", "slot_generated",
         "slot_preemptions", "slot_tokens", "slot_arrival_hi", "slot_arrival_lo",
         "slot_first_hi", "slot_first_lo", "slot_queue_s", "loc", "e_id", "e_tier", "e_last",
         "e_hits", "e_depth", "slot_load_s", "slot_swapped", "slot_spec_acc")
_FILL = {"ttft_s": np.nan, "decode_s": np.nan, "queue_s": np.nan, "load_s": np.nan,
         "preemptions": 0, "tokens_scheduled": 0, "completed": False}


def assign(trace: Trace, num_replicas: int, router: str, seed: int = 0) -> np.ndarray:
    """Replica of each request, in the trace's arrival order (``Trace.order()``)."""
    n = len(trace)
    if router == "round_robin":
        return np.arange(n, dtype=np.int64) % num_replicas
    if router == "random":
        # a stream of its own: the trace's draws use the same seed
        rng = np.random.default_rng([int(seed), 0x5EED_D1CE])
        return rng.integers(0, num_replicas, size=n).astype(np.int64)
    if router == "prefix_hash":
        out = np.zeros(n, np.int64)
        ids = trace.hash_ids
        first = [None if ids is None or len(ids[i]) == 0 else int(ids[i][0])
                 for i in trace.order()]
        plain = np.array([f is None for f in first], bool)
        out[plain] = np.arange(int(plain.sum())) % num_replicas
        if not plain.all():
            keys = np.array([f for f in first if f is not None], np.uint64)
            out[~plain] = (_mix(keys) % np.uint64(num_replicas)).astype(np.int64)
        return out
    raise ValueError(f"router: {router!r} is not one of {', '.join(ROUTERS)}")


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit integer hash (the MurmurHash3 finaliser): neighbouring ids spread over
    the replicas."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(33))) * np.uint64(0xFF51AFD7ED558CCD)
        x = (x ^ (x >> np.uint64(33))) * np.uint64(0xC4CEB9FE1A85EC53)
        return x ^ (x >> np.uint64(33))


@dataclasses.dataclass(frozen=True)
class Split:
    """A trace split over replicas.

    Attributes:
        traces: the non-empty replicas' traces (a replica the router sends nothing to
            has no lane).
        replica: the replica index of each of ``traces``.
        positions: for each of ``traces``, the arrival-order positions (in the whole
            trace) of its requests, in its own arrival order.
    """

    traces: list[Trace]
    replica: list[int]
    positions: list[np.ndarray]


def split(trace: Trace, num_replicas: int, router: str, seed: int = 0,
          assignment: np.ndarray | None = None) -> Split:
    """Each replica's share of ``trace``, in arrival order (``assignment``: the replica
    of each request in arrival order, instead of the router's)."""
    order = trace.order()
    rep = assign(trace, num_replicas, router, seed) if assignment is None else assignment
    traces, reps, pos = [], [], []
    for k in range(num_replicas):
        p = np.flatnonzero(rep == k)
        if p.size == 0:
            continue
        sub = trace._take(order[p])
        sub.name = f"{trace.name} (replica {k} of {num_replicas})"
        sub.whole_max_len = trace.max_len()  # max_model_len is the deployment's
        traces.append(sub)
        reps.append(k)
        pos.append(p)
    return Split(traces, reps, pos)


def _get(tree, i):
    return jax.tree.map(lambda x: np.asarray(x)[i], tree)


def merge_states(state, lanes: Sequence[Sequence[int]], positions: Sequence[Sequence],
                 num_requests: int):
    """The fleet state of each group of replica lanes (a numpy ``SimState`` batch).

    ``state`` is a lane-batched ``SimState``; group g is made of lanes ``lanes[g]``,
    whose requests sit at ``positions[g][j]`` of that group's whole trace; every merged
    per-request array has ``num_requests`` rows (padding as ``init_state`` fills it).
    """
    host = jax.tree.map(np.asarray, state)
    out = []
    for ls, ps in zip(lanes, positions, strict=True):
        ls = list(ls)
        first = _get(host, ls[0])
        new = {}
        for f in PER_REQUEST:
            arr = getattr(host, f)
            if arr.shape[-1] == 0:  # prefix cache not compiled in
                continue
            merged = np.full(num_requests, _FILL[f], arr.dtype)
            for lane, p in zip(ls, ps, strict=True):
                merged[np.asarray(p)] = arr[lane, :len(p)]
            new[f] = merged
        for f in SUM_INT:
            tot = np.sum(getattr(host, f)[ls].astype(np.int64), axis=0)
            new[f] = np.minimum(tot, np.iinfo(np.int32).max).astype(np.int32)
        for f in SUM_DD:
            hi, lo = getattr(host, f + "_hi")[ls], getattr(host, f + "_lo")[ls]
            tot = np.sum(hi.astype(np.float64) + lo.astype(np.float64), axis=0)
            new[f + "_hi"] = tot.astype(np.float32)
            new[f + "_lo"] = (tot - new[f + "_hi"].astype(np.float64)).astype(np.float32)
        for f in MAX:
            if f in ("clock", "start"):
                hi, lo = getattr(host, f + "_hi"), getattr(host, f + "_lo")
                j = ls[int(np.argmax(hi[ls].astype(np.float64) + lo[ls]))]
                new[f + "_hi"], new[f + "_lo"] = hi[j], lo[j]
            else:
                new[f] = np.max(getattr(host, f)[ls], axis=0)
        new["status"] = np.bitwise_or.reduce(host.status[ls], axis=0)
        names = list(new)
        out.append(eqx.tree_at(lambda s, names=names: [getattr(s, n) for n in names], first,
                               [new[n] for n in names]))
    return jax.tree.map(lambda *xs: np.stack(xs), *out)


def fleet_params(params, lanes: Sequence[Sequence[int]], num_replicas: Sequence[int]):
    """One replica's parameters per group (the first lane's), with the lower tiers'
    static power multiplied by the group's replica count (each replica has its own
    tier devices, §5.9)."""
    first = _get(jax.tree.map(np.asarray, params), [ls[0] for ls in lanes])
    if getattr(first, "cache", None) is None:
        return first
    scale = np.asarray(num_replicas, np.float32)
    pw = np.asarray(first.cache.static_power_w)
    return eqx.tree_at(lambda p: p.cache.static_power_w, first,
                       (pw * scale.reshape((-1,) + (1,) * (pw.ndim - 1))).astype(pw.dtype))


_metrics_batch = jax.jit(jax.vmap(metrics_mod.compute_metrics, in_axes=(0, 0, 0)))


def fleet_metrics(params, workload: Workload, state) -> dict[str, np.ndarray]:
    """``jaxsim.metrics.compute_metrics`` of fleet states (one per group), over each
    group's whole workload (``workload`` batched over groups)."""
    return {k: np.asarray(v) for k, v in _metrics_batch(params, workload, state).items()}

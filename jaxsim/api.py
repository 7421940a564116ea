"""Convenience layer: configuration dicts + a trace -> shape, params, workload -> results."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from jaxsim import config as config_mod
from jaxsim.params import SimParams
from jaxsim.shapes import SimShape
from jaxsim.sim import SimResult, simulate_batch
from jaxsim.workload import Trace, Workload, to_workload


@dataclasses.dataclass
class Prepared:
    """Everything ``simulate_batch`` needs, plus host-side derived figures per lane."""

    shape: SimShape
    params: SimParams
    workload: Workload
    info: dict[str, np.ndarray]
    configs: list[dict]


def prepare(
    configs: Mapping | Sequence[Mapping],
    trace: Trace,
    max_slots: int | None = None,
    chunk_iterations: int = 1024,
    max_requests: int | None = None,
) -> Prepared:
    """Validate configurations (partial dicts; defaults fill the rest) for one trace.

    ``max_slots`` defaults to the largest ``max_num_seqs`` (exact); a smaller value is
    faster, and lanes it limits are flagged ``OVERFLOW_SLOTS``.
    """
    if isinstance(configs, Mapping):
        configs = [configs]
    cfgs = [config_mod.validate(c) for c in configs]
    cols = config_mod.columns_from_configs(cfgs)
    params, info = config_mod.params_from_columns(cols, trace.max_len())
    if max_slots is None:
        max_slots = max(int(c["max_slots"] or c["max_num_seqs"]) for c in cfgs)
    R = len(trace) if max_requests is None else max_requests
    shape = SimShape(max_requests=R, max_slots=max_slots, chunk_iterations=chunk_iterations)
    return Prepared(shape, params, to_workload(trace, R), info, cfgs)


def run(
    configs: Mapping | Sequence[Mapping],
    trace: Trace,
    max_slots: int | None = None,
    chunk_iterations: int = 1024,
    max_iterations: int | None = None,
    auto_slots: bool = True,
) -> SimResult:
    """Prepare and simulate in one call."""
    p = prepare(configs, trace, max_slots=max_slots, chunk_iterations=chunk_iterations)
    return simulate_batch(p.shape, p.params, p.workload, max_iterations=max_iterations,
                          auto_slots=auto_slots)

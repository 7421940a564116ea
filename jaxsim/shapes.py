"""Static simulation shape: the only things whose change recompiles."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SimShape:
    """Static capacities of a simulation (hashable; a jit static argument).

    Attributes:
        max_requests: R, rows of the request table (the workload is padded to R).
        max_slots: S, rows of the slot table, which holds running and preempted requests.
            Must be >= ``max_num_seqs`` of every lane for exact results; a lane whose
            admission was limited by S gets the ``OVERFLOW_SLOTS`` status bit (re-run it
            with a larger S; ``simulate_batch(..., auto_slots=True)`` does that).
        chunk_iterations: iterations per compiled scan; the host checks completion once
            per chunk.
        num_tiers: T, KV memory tiers (1 = HBM only; lower tiers are not modelled yet).
        max_replicas: P, data-parallel replicas (1; reserved).
    """

    max_requests: int
    max_slots: int
    chunk_iterations: int = 1024
    num_tiers: int = 1
    max_replicas: int = 1

    def __post_init__(self):
        for name in ("max_requests", "max_slots", "chunk_iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SimShape.{name} must be a positive int, got {value!r}")
        if self.num_tiers != 1:
            raise ValueError(
                f"SimShape.num_tiers={self.num_tiers!r}: only 1 (HBM) is supported so far"
            )
        if self.max_replicas != 1:
            raise ValueError(
                f"SimShape.max_replicas={self.max_replicas!r}: only 1 is supported so far"
            )

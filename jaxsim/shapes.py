"""Static simulation shape: with the batch size, the workload's layout and the shapes of
the parameter arrays (``jaxsim.sim``), the things whose change recompiles."""

from __future__ import annotations

import dataclasses

#: Largest ``SimShape.macro_iterations`` (the macro-step's series are this long).
MAX_MACRO = 64
#: Most priority levels (``Workload.priority`` values ``0 .. MAX_PRIORITY_LEVELS - 1``).
MAX_PRIORITY_LEVELS = 8
#: The event-skipping run length ``jaxsim.api.prepare`` and the sweep runner use.
DEFAULT_MACRO = 16


@dataclasses.dataclass(frozen=True)
class SimShape:
    """Static capacities of a simulation (hashable; a jit static argument).

    Attributes:
        max_requests: R, rows of the request table (the workload is padded to R).
        max_slots: S, rows of the slot table, which holds running and preempted requests.
            A lane whose admission was limited by S gets the ``OVERFLOW_SLOTS`` status
            bit (re-run it with a larger S; ``simulate_batch(..., auto_slots=True)`` does
            that). ``max_num_seqs`` rows always suffice without event skipping; with it,
            the rows of requests that finished inside a decode run stay until the step
            ends, so up to twice ``max_num_seqs`` may be needed.
        chunk_iterations: steps per compiled chunk; the host checks completion (and
            compacts lanes) once per chunk, and a chunk ends early, at a multiple of
            ``jaxsim.sim.CHECK_STEPS``, once every lane of the batch is done.
        num_tiers: T, KV memory tiers (1 = HBM only, at most 6: HBM plus five below it).
        cache_entries: K, rows of the prefix-cache table (0 = prefix caching is not
            compiled in). Must hold every cached block of every tier; a lane that runs
            out of rows gets ``OVERFLOW_CACHE`` (``jaxsim.prefix.table_size`` sizes it).
        hash_space: U, number of distinct block ids the workloads use (the id -> row map
            has U entries; ``Workload.hash_ids`` values are ``< U``).
        prefetch: compile in the prefetch of queued requests' prefixes
            (docs/semantics.md §5.11; needs the prefix cache). Lanes whose
            ``CacheParams.prefetch`` is 1 need it; without it they are refused.
        macro_iterations: event skipping (docs/semantics.md §6): each step first
            advances up to this many decode-only iterations in closed form when no
            event (arrival, admission, preemption, a request's finish, KV allocation
            failure) can fall inside them, then runs one ordinary iteration. 0 steps
            every iteration on its own (the default of a hand-built shape;
            ``jaxsim.api.prepare`` and the sweep runner use ``DEFAULT_MACRO``). Not
            used with prefetch compiled in (``prefetch``): then every iteration is its
            own step.
        max_replicas: P, data-parallel replicas (1; reserved).
        async_scheduling: compile in asynchronous scheduling (docs/semantics.md §2.10)
            for the lanes whose ``SchedulerParams.async_scheduling`` is 1 (others run as
            without it, at a little more cost per step). ``simulate_batch`` turns it on
            when a lane needs it; ``jaxsim.api.prepare`` sets it from the configurations.
        speculative: compile in speculative decoding (docs/semantics.md §9) for the
            lanes whose ``SpecParams.num_tokens`` is above 0 (``SimParams.spec``).
            ``simulate_batch`` turns it on when a lane needs it. Its decode runs
            (event skipping) evaluate the cost model once per iteration of the run;
            with the prefix cache also compiled in, every iteration is its own step.
        spec_draft: compile in a speculative drafter's GPU time (§9): needed by the lanes
            whose ``SpecParams.has_draft`` is 1 (``eagle``, ``draft_model``); n-gram
            drafts cost none. ``simulate_batch`` turns it on when a lane needs it.
        external_kv: compile in requests that arrive with the KV of some of their prompt
            tokens (``Workload.external_tokens``; a disaggregated decode instance's,
            docs/semantics.md §8). ``simulate_batch`` turns it on when a workload has
            them; not with the prefix cache compiled in.
        priority_levels: L, priority levels compiled in for priority scheduling
            (docs/semantics.md §10): 0 = not compiled in; otherwise the workloads'
            priorities are ``< L`` (at most ``MAX_PRIORITY_LEVELS``) and the lanes whose
            ``SchedulerParams.scheduling_policy`` is 1 schedule by them (the others stay
            first come, first served); every lane reports metrics per level. Not with
            the prefix cache, speculative decoding or external KV compiled in. A
            priority lane's decode runs (event skipping) need an empty queue throughout:
            a waiting request ends them even when it is blocked. ``simulate_batch`` sets
            it when a lane schedules by priority or the workload has priorities other
            than 0.
    """

    max_requests: int
    max_slots: int
    chunk_iterations: int = 256
    num_tiers: int = 1
    max_replicas: int = 1
    cache_entries: int = 0
    hash_space: int = 0
    prefetch: bool = False
    macro_iterations: int = 0
    async_scheduling: bool = False
    external_kv: bool = False
    speculative: bool = False
    spec_draft: bool = False
    priority_levels: int = 0

    def __post_init__(self):
        for name in ("max_requests", "max_slots", "chunk_iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SimShape.{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_tiers, int) or not 1 <= self.num_tiers <= 6:
            raise ValueError(
                f"SimShape.num_tiers={self.num_tiers!r}: must be an int in 1..6 (HBM plus "
                "up to five lower tiers)"
            )
        for name in ("cache_entries", "hash_space"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"SimShape.{name} must be an int >= 0, got {value!r}")
        if self.cache_entries > 0 and self.hash_space < 1:
            raise ValueError("SimShape.hash_space must be >= 1 when cache_entries > 0")
        if self.num_tiers > 1 and self.cache_entries == 0:
            raise ValueError(f"SimShape.num_tiers={self.num_tiers}: lower tiers need the "
                             "prefix cache (cache_entries > 0)")
        if not isinstance(self.prefetch, bool):
            raise ValueError(f"SimShape.prefetch must be a bool, got {self.prefetch!r}")
        for name in ("speculative", "spec_draft"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SimShape.{name} must be a bool, got "
                                 f"{getattr(self, name)!r}")
        if self.spec_draft and not self.speculative:
            raise ValueError("SimShape.spec_draft=True needs speculative=True")
        if not isinstance(self.async_scheduling, bool):
            raise ValueError("SimShape.async_scheduling must be a bool, got "
                             f"{self.async_scheduling!r}")
        if not isinstance(self.external_kv, bool):
            raise ValueError(f"SimShape.external_kv must be a bool, got {self.external_kv!r}")
        if self.external_kv and self.cache_entries > 0:
            raise ValueError("SimShape.external_kv=True cannot be combined with the prefix "
                             "cache (cache_entries > 0): requests that bring their KV run "
                             "without prefix caching (docs/semantics.md §8)")
        if self.prefetch and self.cache_entries == 0:
            raise ValueError("SimShape.prefetch=True needs the prefix cache "
                             "(cache_entries > 0)")
        pl = self.priority_levels
        if not isinstance(pl, int) or isinstance(pl, bool) or not 0 <= pl <= MAX_PRIORITY_LEVELS:
            raise ValueError(f"SimShape.priority_levels={pl!r}: must be an int in "
                             f"0..{MAX_PRIORITY_LEVELS} (0: priority scheduling not compiled in)")
        if pl and (self.cache_entries > 0 or self.speculative or self.external_kv):
            raise ValueError("SimShape.priority_levels > 0 (priority scheduling, "
                             "docs/semantics.md §10) cannot be combined with the prefix cache, "
                             "speculative decoding or external KV in this version")
        m = self.macro_iterations
        if not isinstance(m, int) or isinstance(m, bool) or not 0 <= m <= MAX_MACRO:
            raise ValueError(f"SimShape.macro_iterations={m!r}: must be an int in "
                             f"0..{MAX_MACRO} (0 disables event skipping)")
        if self.max_replicas != 1:
            raise ValueError(
                f"SimShape.max_replicas={self.max_replicas!r}: only 1 is supported so far"
            )

    @property
    def event_skipping(self) -> bool:
        """Whether steps advance decode runs in closed form (``macro_iterations``)."""
        return self.macro_iterations > 0 and not self.prefetch

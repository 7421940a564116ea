"""Design-space search: spaces, samplers, the sweep runner, objectives, optimisers, Pareto.

Modules: ``space`` (DesignSpace, YAML spaces), ``samplers`` (grid, random, Halton),
``runner`` (chunked, sharded, resumable sweeps to Parquet), ``objectives`` (SLOs, costs),
``capacity`` (vectorised bisection over arrival rate), ``cmaes`` and ``optimize``
(CMA-ES and gradient search), ``pareto`` (fronts, hypervolume, plots), ``export``
(``vllm serve`` command lines), ``cli`` (``jaxsim sweep | best | pareto``).
"""

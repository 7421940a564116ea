"""Array type aliases and the dimension-letter glossary.

Dimension letters used in annotations and docstrings:

- ``R``: ``SimShape.max_requests`` (request table rows).
- ``S``: ``SimShape.max_slots`` (slot table rows: running + preempted requests).
- ``K``: number of cost-model parameters (``len(COST_PARAM_NAMES)``).
- ``B``: configurations in a batch (the ``vmap`` axis; never inside the step).
"""

from jaxtyping import Array, Bool, Float, Int

__all__ = ["Array", "Bool", "Float", "Int"]

"""jaxsim: a vectorised LLM-inference serving simulator in JAX.

One engine iteration (continuous batching, paged KV cache, chunked prefill, recompute
preemption, a differentiable kernel-time model) is a fixed-shape state transition that
``simulate_batch`` scans and vmaps across thousands of configurations at once.
"""

from jaxsim import status as status
from jaxsim.config import ConfigError as ConfigError
from jaxsim.params import CostParams as CostParams
from jaxsim.params import SimParams as SimParams
from jaxsim.params import broadcast as broadcast
from jaxsim.params import index as index
from jaxsim.params import stack as stack
from jaxsim.shapes import SimShape as SimShape
from jaxsim.sim import SimResult as SimResult
from jaxsim.sim import simulate as simulate
from jaxsim.sim import simulate_batch as simulate_batch
from jaxsim.workload import Trace as Trace
from jaxsim.workload import Workload as Workload
from jaxsim.workload import synthetic as synthetic
from jaxsim.workload import to_workload as to_workload

__version__ = "0.1.0"

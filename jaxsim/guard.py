"""Work that a vmapped batch does only while one of its lanes needs it."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def when_needed(needed, fn, operands: tuple, otherwise):
    """``fn(*operands)`` where the bool scalar ``needed`` holds, else ``otherwise`` (a
    pytree of ``fn``'s output structure).

    Under ``vmap`` a ``lax.cond`` on a per-lane predicate becomes a select that computes
    both branches. This is a ``while_loop`` of at most one trip instead: a vmapped batch
    runs its body only while some lane's predicate holds, so a step where no lane needs
    ``fn`` skips it (the other lanes keep ``otherwise``). The operands pass through an
    ``optimization_barrier`` with the loop's carry, so that XLA does not hoist ``fn`` out
    of the loop as loop-invariant, which would compute it every time.

    Reverse-mode differentiation passes through it as long as ``fn``'s result is not
    differentiated (an integer order, as the simulator uses it): JAX cannot transpose
    a ``while_loop`` whose carry has a tangent.
    """

    def body(carry):
        _, ops = jax.lax.optimization_barrier((carry[1], operands))
        return jnp.int32(1), fn(*ops)

    _, out = jax.lax.while_loop(lambda c: c[0] < jnp.asarray(needed).astype(jnp.int32),
                                body, (jnp.int32(0), otherwise))
    return out

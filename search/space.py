"""Design spaces: axes over configuration keys, mapped from the unit cube to configurations.

A space is a base configuration (any ``jaxsim simulate`` keys) plus axes. Each axis names
one configuration key (dotted for sections: ``workload.rate``, ``slo.ttft_s``,
``cost.cpu_iter_s``) and is one of

- ``float``: continuous in ``[low, high]``, linear or ``log``;
- ``int``: the integers ``low..high`` (every ``step``-th), or ``num`` log-spaced integers
  when ``log`` is set;
- ``choice``: an explicit list of ``values`` (GPU type, model, scheduler, any key);
- fixed values belong in ``base``.

A point ``u`` in ``[0, 1]^d`` decodes axis by axis: a continuous axis interpolates; a
discrete axis with ``n`` levels takes level ``min(floor(u * n), n - 1)``. Samplers and
optimisers work in ``u``-space only, so they know nothing of the simulator.

Constraints are expressions over the keys (``max_num_batched_tokens >= max_num_seqs``,
``tp * 8 <= 64``); a point that violates one is simulated as an infeasible lane (status
bit ``INF_CONSTRAINT``), never raised. The simulator's own feasibility rules (TP divides
the heads, the model fits in memory, ...) apply as always.

Every mistake in a space file (unknown key, empty axis, low > high, a bad unit, a level
that is invalid whatever the other axes are, a space with no valid point, a constraint
that no point satisfies, an unknown sampler) raises :class:`SpaceError` naming the field,
the value and what is allowed, before anything runs. A level that is valid only with
other axes' levels (``tiers: dram`` needs ``enable_prefix_caching: true``) is kept; a
point whose combination the configuration rules refuse is an infeasible lane like a
constraint violator (``INF_CONSTRAINT``), with the validation message as its reason.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxsim import config as config_mod


class SpaceError(ValueError):
    """A bad design space; the message names the field, the value and what is allowed."""


AXIS_KINDS = ("float", "int", "choice")
SAMPLERS = ("grid", "random", "halton")

#: Units accepted per key: unit -> factor to the key's own unit.
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_RATE_UNITS = {"req/s": 1.0, "req/min": 1.0 / 60.0, "req/h": 1.0 / 3600.0}
_GB_UNITS = {"GB": 1.0, "MB": 1e-3, "TB": 1e3, "GiB": 2**30 / 1e9, "MiB": 2**20 / 1e9}


def units_for(key: str) -> dict[str, float]:
    """Units a key accepts (empty: the key is unitless)."""
    if key in ("slo.ttft_s", "slo.tpot_s") or key.endswith("_s") and key.startswith("cost."):
        return _TIME_UNITS
    if key == "workload.rate":
        return _RATE_UNITS
    if key.endswith("_gb"):
        return _GB_UNITS
    return {}


def _set_key(cfg: dict, key: str, value: Any) -> None:
    """Set dotted ``key`` (``max_num_seqs``, ``workload.rate``, ``tier.dram.capacity_gb``)."""
    *outer, last = key.split(".")
    node = cfg
    for i, part in enumerate(outer):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            where = ".".join(outer[: i + 1])
            raise SpaceError(f"base.{where}: {node!r} must be a mapping")
    node[last] = value


def _get_key(cfg: Mapping, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


@dataclasses.dataclass(frozen=True)
class Axis:
    """One axis of a design space.

    Attributes:
        key: configuration key (``max_num_seqs``, ``workload.rate``, ...).
        kind: ``float``, ``int`` or ``choice``.
        low, high: bounds of a ``float`` axis (in the key's own unit).
        log: log-uniform interpolation (``float``) or log-spaced levels (``int``).
        values: levels of a discrete axis (``int`` and ``choice``), in order.
        num: grid points of a ``float`` axis (used by the grid sampler only).
    """

    key: str
    kind: str
    low: float = math.nan
    high: float = math.nan
    log: bool = False
    values: tuple = ()
    num: int | None = None

    @property
    def levels(self) -> int:
        """Number of levels (0 for a continuous axis)."""
        return 0 if self.kind == "float" else len(self.values)

    def grid_size(self) -> int:
        """Points of this axis in a full grid."""
        if self.kind == "float":
            return int(self.num)
        return len(self.values)

    def decode(self, u: np.ndarray) -> np.ndarray:
        """Values at unit-cube coordinates ``u`` (float64 [n]); object array for choices."""
        u = np.clip(np.asarray(u, np.float64), 0.0, 1.0)
        if self.kind == "float":
            if self.log:
                lo, hi = math.log(self.low), math.log(self.high)
                x = np.exp(lo + u * (hi - lo))
            else:
                x = self.low + u * (self.high - self.low)
            # within the declared bounds, and the ends exactly (exp(log(b)) and a + (b - a)
            # may be an ulp past b, which a constraint such as workload.rate <= b refused)
            x = np.where(u >= 1.0, self.high, np.where(u <= 0.0, self.low, x))
            return np.clip(x, self.low, self.high)
        idx = np.minimum((u * len(self.values)).astype(np.int64), len(self.values) - 1)
        vals = np.asarray(self.values, dtype=object)
        return vals[idx]

    def grid_u(self) -> np.ndarray:
        """Unit-cube coordinates of this axis' grid points."""
        n = self.grid_size()
        if self.kind == "float":
            return np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5])
        return (np.arange(n) + 0.5) / n

    def encode(self, value: Any) -> float:
        """A unit-cube coordinate that decodes to ``value`` (the inverse of ``decode``)."""
        if self.kind == "float":
            if self.log:
                lo, hi = math.log(self.low), math.log(self.high)
                return (math.log(value) - lo) / (hi - lo) if hi > lo else 0.5
            return (value - self.low) / (self.high - self.low) if self.high > self.low else 0.5
        for i, v in enumerate(self.values):
            if v == value:
                return (i + 0.5) / len(self.values)
        raise SpaceError(f"axes.{self.key}: {value!r} is not one of its values")

    def spec(self) -> dict:
        """JSON-able description (what a space file would say)."""
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "float":
            d.update(low=self.low, high=self.high, log=self.log)
            if self.num is not None:
                d["num"] = self.num
        else:
            d["values"] = list(self.values)
        return d


# --------------------------------------------------------------------------------------
# Constraints: a small, safe expression language over configuration keys
# --------------------------------------------------------------------------------------

_ALLOWED_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
    ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
    ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Name, ast.Load,
    ast.Constant, ast.Attribute,
)


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


@dataclasses.dataclass(frozen=True)
class Constraint:
    """``expr`` over configuration keys; points where it is false are infeasible."""

    expr: str
    field: str

    def names(self) -> list[str]:
        tree = self._parse()
        out = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute | ast.Name):
                name = _dotted(node)
                if name is not None and name not in out and not any(
                        o.startswith(name + ".") for o in out):
                    out.append(name)
        # keep only outermost dotted names (drop 'workload' when 'workload.rate' is used)
        return [n for n in out if not any(o != n and o.startswith(n + ".") for o in out)]

    def _parse(self):
        try:
            tree = ast.parse(self.expr, mode="eval")
        except SyntaxError:
            raise SpaceError(f"{self.field}: {self.expr!r} is not a valid expression "
                             "(use key names, numbers, + - * / // % **, comparisons, "
                             "and/or/not)") from None
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED_NODES):
                raise SpaceError(f"{self.field}: {self.expr!r} uses "
                                 f"{type(node).__name__}; allowed: key names, numbers, "
                                 "+ - * / // % **, comparisons, and/or/not")
        return tree

    def evaluate(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Boolean mask over the rows of ``columns`` (dotted key -> values)."""
        tree = self._parse()

        def ev(node):
            if isinstance(node, ast.Expression):
                return ev(node.body)
            if isinstance(node, ast.Constant):
                return node.value
            if isinstance(node, ast.Name | ast.Attribute):
                name = _dotted(node)
                if name not in columns:
                    raise SpaceError(f"{self.field}: {name!r} is not a configuration key "
                                     f"of this space; known: {', '.join(sorted(columns))}")
                return columns[name]
            if isinstance(node, ast.BoolOp):
                vals = [np.asarray(ev(v), bool) for v in node.values]
                fn = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
                out = vals[0]
                for v in vals[1:]:
                    out = fn(out, v)
                return out
            if isinstance(node, ast.UnaryOp):
                v = ev(node.operand)
                if isinstance(node.op, ast.Not):
                    return np.logical_not(v)
                return -v if isinstance(node.op, ast.USub) else v
            if isinstance(node, ast.BinOp):
                a, b = ev(node.left), ev(node.right)
                ops = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
                       ast.Div: np.true_divide, ast.FloorDiv: np.floor_divide,
                       ast.Mod: np.mod, ast.Pow: np.power}
                try:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        return ops[type(node.op)](a, b)
                except TypeError:
                    raise SpaceError(f"{self.field}: {self.expr!r}: arithmetic on a "
                                     "non-numeric key") from None
            if isinstance(node, ast.Compare):
                left = ev(node.left)
                out = None
                for op, comp in zip(node.ops, node.comparators, strict=True):
                    right = ev(comp)
                    ops = {ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less,
                           ast.LtE: np.less_equal, ast.Gt: np.greater,
                           ast.GtE: np.greater_equal}
                    try:
                        r = np.asarray(ops[type(op)](left, right), bool)
                    except TypeError:
                        raise SpaceError(f"{self.field}: {self.expr!r}: cannot compare "
                                         "these values") from None
                    out = r if out is None else out & r
                    left = right
                return out
            raise SpaceError(f"{self.field}: unsupported expression")  # pragma: no cover

        n = len(next(iter(columns.values()))) if columns else 1
        res = np.asarray(ev(tree))
        if res.dtype != bool:
            raise SpaceError(f"{self.field}: {self.expr!r} is not a condition (it must "
                             "compare, e.g. 'max_num_batched_tokens >= max_num_seqs')")
        return np.broadcast_to(res, (n,)).copy()


# --------------------------------------------------------------------------------------
# The design space
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class DesignSpace:
    """A base configuration, axes, constraints and how to sample them.

    Attributes:
        base: partial configuration shared by every point (validated).
        axes: the axes, in order (the grid is lexicographic in this order).
        constraints: conditions every feasible point meets.
        sampler: ``grid``, ``random`` or ``halton`` (scrambled; quasi-random).
        num_samples: points drawn by ``random`` / ``halton`` (the grid size otherwise).
        seed: seed of the sampler (each point's coordinates depend only on seed and id).
        name: label for reports.
        objectives: free-form settings for ranking (SLOs, prices), kept with the results.

    Set by the checks: ``probe_configs``, the valid configurations at the probe points
    (corners, levels, random points), and ``stand_in``, the first of them (it fills the
    parameters of invalid points, which are never simulated).
    """

    base: dict
    axes: list[Axis]
    constraints: list[Constraint] = dataclasses.field(default_factory=list)
    sampler: str = "grid"
    num_samples: int | None = None
    seed: int = 0
    name: str = "space"
    objectives: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self._check()

    # ---- sizes -----------------------------------------------------------------------

    @property
    def num_dims(self) -> int:
        """d, the dimension of the unit cube."""
        return len(self.axes)

    @property
    def levels(self) -> tuple[int, ...]:
        """Per axis: 0 for continuous, n for a discrete axis with n levels."""
        return tuple(a.levels for a in self.axes)

    def grid_shape(self) -> tuple[int, ...]:
        return tuple(a.grid_size() for a in self.axes)

    @property
    def size(self) -> int:
        """Number of points the sampler produces."""
        if self.sampler == "grid":
            return int(np.prod(self.grid_shape(), dtype=np.int64)) if self.axes else 1
        return int(self.num_samples)

    # ---- points ----------------------------------------------------------------------

    def sample(self, ids: np.ndarray) -> np.ndarray:
        """Unit-cube points of configuration ids (float64 [n, d]); see ``search.samplers``."""
        from search import samplers

        ids = np.asarray(ids, np.int64)
        if np.any(ids < 0) or np.any(ids >= self.size):
            raise SpaceError(f"ids must lie in [0, {self.size}); got "
                             f"[{ids.min()}, {ids.max()}]")
        if self.sampler == "grid":
            return samplers.grid(self.grid_shape(), ids, [a.grid_u() for a in self.axes])
        if self.sampler == "random":
            return samplers.random(ids, self.num_dims, self.seed)
        return samplers.halton(ids, self.num_dims, self.seed)

    def decode_columns(self, u: np.ndarray) -> dict[str, np.ndarray]:
        """Axis key -> values at points ``u`` [n, d]."""
        u = np.atleast_2d(np.asarray(u, np.float64))
        if u.shape[1] != self.num_dims:
            raise SpaceError(f"u has {u.shape[1]} columns; the space has {self.num_dims} axes")
        return {a.key: a.decode(u[:, j]) for j, a in enumerate(self.axes)}

    def configs(self, u: np.ndarray) -> list[dict]:
        """Validated configuration dicts at points ``u`` [n, d]; an invalid point raises."""
        cfgs, reasons = self.expand(u)
        for i, r in enumerate(reasons):
            if r is not None:
                raise SpaceError(f"point {i}: {r}")
        return cfgs

    def expand(self, u: np.ndarray) -> tuple[list[dict], list[str | None]]:
        """Configurations at points ``u`` [n, d] and, per point, why it is invalid.

        A point whose combination of levels the configuration rules refuse (e.g.
        ``tiers: dram`` with ``enable_prefix_caching: false``) gets its validation message
        as reason (``None`` for a valid point) and, as configuration, the validated base
        with the axes' normalised levels (for the results table only: it is never
        simulated; see ``search.runner.batch_from_configs``).
        """
        cols = self.decode_columns(u)
        n = np.atleast_2d(u).shape[0]
        out, reasons = [], []
        for i in range(n):
            c = copy.deepcopy(self.base)
            for k, v in cols.items():
                _set_key(c, k, _py(v[i]))
            try:
                out.append(config_mod.validate(c))
                reasons.append(None)
            except config_mod.ConfigError as e:
                out.append(self._shown({k: _py(v[i]) for k, v in cols.items()}))
                reasons.append(str(e))
        return out, reasons

    def _shown(self, values: Mapping[str, Any]) -> dict:
        """The validated base with normalised axis values (an invalid point, as shown)."""
        c = copy.deepcopy(self._base_valid)
        for a in self.axes:
            v = values[a.key]
            if a.kind != "float":
                v = copy.deepcopy(self._normalised[a.key][_level_key(v)])
            _set_key(c, a.key, v)
        return c

    def constraint_mask(self, cfgs: Sequence[Mapping]) -> np.ndarray:
        """True where every constraint holds."""
        ok = np.ones(len(cfgs), bool)
        for con in self.constraints:
            ok &= con.evaluate(_constraint_columns(con, cfgs))
        return ok

    def point(self, values: Mapping[str, Any]) -> np.ndarray:
        """Unit-cube coordinates of a point given by its axis values, as the space file
        gives them or as the results hold them (normalised: ``tiers: dram`` is stored as
        ``["dram"]``)."""
        out = []
        for a in self.axes:
            v = values[a.key]
            if a.kind != "float" and not any(x == v for x in a.values):
                norm = getattr(self, "_normalised", {}).get(a.key, {})
                v = next((x for x in a.values if norm.get(_level_key(_py(x))) == v), v)
            out.append(a.encode(v))
        return np.array(out)

    # ---- identity --------------------------------------------------------------------

    def spec(self) -> dict:
        """JSON-able description; equal specs mean equal sweeps."""
        return {
            "name": self.name, "base": self.base, "sampler": self.sampler,
            "num_samples": self.num_samples, "seed": self.seed,
            "axes": {a.key: a.spec() for a in self.axes},
            # the axes' order sets which configuration each id is (manifests are written
            # with sorted keys, so ``axes`` alone loses it)
            "axis_order": [a.key for a in self.axes],
            "constraints": [c.expr for c in self.constraints],
        }

    def legacy_digest(self) -> str:
        """The digest of manifests written before the axis order was recorded."""
        spec = self.spec()
        del spec["axis_order"]
        return _sha256(spec)

    def digest(self) -> str:
        """sha256 of :meth:`spec` (what the sweep depends on)."""
        return _sha256(self.spec())

    # ---- checks ----------------------------------------------------------------------

    def _check(self):
        if self.sampler not in SAMPLERS:
            raise SpaceError(f"sampler: {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        keys = [a.key for a in self.axes]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise SpaceError(f"axes: {sorted(dup)[0]!r} appears twice")
        if self.sampler == "grid":
            if self.num_samples is not None:
                raise SpaceError(f"num_samples: {self.num_samples!r} is for the random and "
                                 "halton samplers; the grid sampler runs every point of the "
                                 "grid (leave num_samples out, or set sampler)")
            for a in self.axes:
                if a.kind == "float" and a.num is None:
                    raise SpaceError(f"axes.{a.key}.num: required by the grid sampler for a "
                                     "float axis (number of grid points, >= 1)")
        else:
            n = self.num_samples
            if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
                raise SpaceError(f"num_samples: {n!r} must be an integer >= 1 for the "
                                 f"{self.sampler} sampler")
        try:
            self._base_valid = config_mod.validate(self.base)
        except config_mod.ConfigError as e:
            raise SpaceError(f"base.{e}") from None
        self._check_levels()
        # Some point must be valid, and each constraint must hold at some valid point.
        probe = self._probe_points()
        cfgs, reasons = self.expand(probe)
        valid = [c for c, r in zip(cfgs, reasons, strict=True) if r is None]
        if not valid:
            raise SpaceError(f"axes: no combination of levels is a valid configuration at "
                             f"any of {len(cfgs)} probe points of the space (corners, "
                             f"levels and random points); e.g. {reasons[0]}")
        self.stand_in = valid[0]
        self.probe_configs = valid
        for con in self.constraints:
            con._parse()
            ok = con.evaluate(_constraint_columns(con, valid))
            if not ok.any():
                raise SpaceError(f"{con.field}: {con.expr!r} is false at every one of "
                                 f"{len(valid)} valid probe points of the space (corners, "
                                 "levels and random points): no configuration can satisfy "
                                 "it")

    def _check_levels(self):
        """Refuse a level (or bound) that is invalid whatever the other axes are.

        Each level is validated on the base. One that fails there is tried with each level
        (or bound) of every other axis in turn, then at 64 random points of the space; it
        is refused (with the base's message) only if all of these fail too. A level that
        passes is kept: combinations where it is invalid become infeasible lanes.
        Records each discrete level's normalised value (for :meth:`_shown`).
        """
        self._normalised: dict[str, dict[str, Any]] = {}
        rng = np.random.default_rng(1)
        for j, a in enumerate(self.axes):
            norm = self._normalised[a.key] = {}
            for li, v in enumerate(_levels(a)):
                c = copy.deepcopy(self.base)
                _set_key(c, a.key, _py(v))
                try:
                    good = config_mod.validate(c)
                except config_mod.ConfigError as e:
                    good = self._witness(j, li, _py(v), rng)
                    if good is None:
                        raise SpaceError(f"axes.{a.key}: {e}") from None
                if a.kind != "float":
                    norm[_level_key(_py(v))] = _get_key(good, a.key)

    def _witness(self, j: int, li: int, v: Any, rng) -> dict | None:
        """A valid configuration with level ``v`` of axis ``j`` and other axes' levels."""
        a = self.axes[j]
        for k, b in enumerate(self.axes):
            if k == j:
                continue
            for w in _levels(b):
                c = copy.deepcopy(self.base)
                _set_key(c, a.key, v)
                _set_key(c, b.key, _py(w))
                try:
                    return config_mod.validate(c)
                except config_mod.ConfigError:
                    continue
        u = rng.random((64, self.num_dims))
        if a.kind == "float":
            u[:, j] = float(li)  # low (0) or high (1)
        else:
            u[:, j] = (li + 0.5) / len(a.values)
        cols = self.decode_columns(u)
        for i in range(len(u)):
            c = copy.deepcopy(self.base)
            for key, vals in cols.items():
                _set_key(c, key, _py(vals[i]))
            try:
                return config_mod.validate(c)
            except config_mod.ConfigError:
                continue
        return None

    def _probe_points(self) -> np.ndarray:
        """Corners of discrete levels and bounds, plus random points (for checks)."""
        d = self.num_dims
        if d == 0:
            return np.zeros((1, 0))
        rng = np.random.default_rng(0)
        pts = [rng.random((256, d))]
        for j, a in enumerate(self.axes):
            g = a.grid_u() if a.kind != "float" else np.array([0.0, 1.0])
            blk = rng.random((len(g), d))
            blk[:, j] = g
            pts.append(blk)
        pts.append(np.zeros((1, d)))
        pts.append(np.ones((1, d)))
        if self.sampler == "grid" and self.size <= 4096:
            from search import samplers

            pts.append(samplers.grid(self.grid_shape(), np.arange(self.size),
                                     [a.grid_u() for a in self.axes]))
        return np.concatenate(pts)


def _constraint_columns(con: Constraint, cfgs: Sequence[Mapping]) -> dict[str, np.ndarray]:
    cols = {}
    for name in con.names():
        try:
            cols[name] = np.array([_get_key(c, name) for c in cfgs])
        except (KeyError, TypeError):
            raise SpaceError(f"{con.field}: {name!r} is not a configuration key; use keys "
                             "such as max_num_seqs, tp, workload.rate") from None
    return cols


def _levels(a: Axis) -> Sequence[Any]:
    """An axis's discrete levels, or a float axis's bounds."""
    return a.values if a.kind != "float" else (a.low, a.high)


def _level_key(v) -> str:
    """A hashable key of an axis level (levels may be lists or mappings)."""
    return json.dumps(v, sort_keys=True, default=str)


def _py(v):
    """numpy scalar -> Python scalar (so configuration validation accepts it)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


# --------------------------------------------------------------------------------------
# Reading spaces (YAML or dict)
def _sha256(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------

_SPACE_KEYS = ("name", "base", "axes", "constraints", "sampler", "num_samples", "seed",
               "objectives", "axis_order")
_AXIS_KEYS = ("kind", "low", "high", "log", "step", "num", "values", "unit", "discrete")


def _num(field, v, integer=False):
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpaceError(f"{field}: {v!r} is not a number")
    if not math.isfinite(v):
        raise SpaceError(f"{field}: {v!r} must be finite")
    if integer and not float(v).is_integer():
        raise SpaceError(f"{field}: {v!r} is not an integer")
    return int(v) if integer else float(v)


def _apply_unit(key: str, field: str, v, unit):
    if unit is None:
        return v
    allowed = units_for(key)
    axis = f"axes.{key}"
    if not allowed:
        raise SpaceError(f"{axis}.unit: {unit!r}: {key} has no unit (give plain numbers)")
    if unit not in allowed:
        raise SpaceError(f"{axis}.unit: {unit!r} is not one of {', '.join(allowed)}")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpaceError(f"{field}: {v!r} is not a number")
    return float(v) * allowed[unit]


def axis_from_spec(key: str, spec: Any) -> Axis:
    """One axis from its space-file entry (a mapping, or a plain list of values)."""
    field = f"axes.{key}"
    if not isinstance(key, str) or not key:
        raise SpaceError(f"axes: {key!r} is not a configuration key")
    if isinstance(spec, list):
        spec = {"values": spec}
    if not isinstance(spec, Mapping):
        raise SpaceError(f"{field}: {spec!r} must be a mapping (kind/low/high/...) or a "
                         "list of values")
    for k in spec:
        if k not in _AXIS_KEYS:
            raise SpaceError(f"{field}.{k}: unknown axis field; allowed: "
                             f"{', '.join(_AXIS_KEYS)}")
    unit = spec.get("unit")
    kind = spec.get("kind", "choice" if "values" in spec else None)
    if kind is None:
        raise SpaceError(f"{field}.kind: missing; allowed: {', '.join(AXIS_KINDS)} (or give "
                         "values: [...])")
    if kind not in AXIS_KINDS:
        raise SpaceError(f"{field}.kind: {kind!r} is not one of {', '.join(AXIS_KINDS)}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{field}.log: {log!r} must be true or false")
    if kind == "int" and "values" in spec:  # explicit levels (as DesignSpace.spec() writes)
        unused = [k for k in ("low", "high", "log", "step", "num", "discrete", "unit")
                  if k in spec]
        if unused:
            raise SpaceError(f"{field}.{unused[0]}: not used with values (an int axis "
                             "takes values, or low/high with step or log)")
        vals = spec["values"]
        if not isinstance(vals, list) or not vals or any(
                isinstance(v, bool) or not isinstance(v, int) for v in vals):
            raise SpaceError(f"{field}.values: {vals!r} must be a non-empty list of integers")
        if len(set(vals)) != len(vals):
            raise SpaceError(f"{field}.values: {vals!r} has duplicates")
        return Axis(key, "int", values=tuple(vals))
    if kind == "float" and "values" in spec:
        raise SpaceError(f"{field}.values: not used by a float axis (low/high, and num for "
                         "a grid); listed values are kind: choice")
    if kind == "int" and "discrete" in spec:
        raise SpaceError(f"{field}.discrete: only for float axes (an int axis is discrete)")
    if kind == "choice":
        unused = [k for k in ("low", "high", "log", "step", "num", "discrete") if k in spec]
        if unused:
            raise SpaceError(f"{field}.{unused[0]}: not used by a choice axis (its levels "
                             "are its values)")
        vals = spec.get("values")
        if not isinstance(vals, list) or len(vals) == 0:
            raise SpaceError(f"{field}.values: {vals!r}: an axis needs a non-empty list of "
                             "values")
        vals = [_apply_unit(key, f"{field}.values", v, unit) for v in vals]
        if len({json.dumps(v, sort_keys=True, default=str) for v in vals}) != len(vals):
            raise SpaceError(f"{field}.values: {vals!r} has duplicates")
        return Axis(key, "choice", values=tuple(vals))
    for need in ("low", "high"):
        if need not in spec:
            raise SpaceError(f"{field}.{need}: required for a {kind} axis")
    integer = kind == "int"
    lo = _num(f"{field}.low", spec["low"], integer)
    hi = _num(f"{field}.high", spec["high"], integer)
    if lo > hi:
        raise SpaceError(f"{field}: low={lo} > high={hi}; the axis is empty")
    if log and lo <= 0:
        raise SpaceError(f"{field}.low: {lo} must be > 0 for a log axis")
    num = spec.get("num")
    if num is not None:
        num = _num(f"{field}.num", num, True)
        if num < 1:
            raise SpaceError(f"{field}.num: {num} must be >= 1")
    if kind == "float":
        if "step" in spec:
            raise SpaceError(f"{field}.step: only for int axes (use num for a float grid)")
        lo_u = _apply_unit(key, f"{field}.low", lo, unit)
        hi_u = _apply_unit(key, f"{field}.high", hi, unit)
        discrete = spec.get("discrete", False)
        if not isinstance(discrete, bool):
            raise SpaceError(f"{field}.discrete: {discrete!r} must be true or false")
        if discrete:
            # only the num grid values: a discrete axis for every sampler and optimiser
            if num is None:
                raise SpaceError(f"{field}.num: required with discrete: true")
            ax = Axis(key, "float", low=lo_u, high=hi_u, log=log, num=num)
            return Axis(key, "choice", values=tuple(float(v) for v in ax.decode(ax.grid_u())))
        return Axis(key, "float", low=lo_u, high=hi_u, log=log, num=num)
    if unit is not None:
        raise SpaceError(f"{field}.unit: int axes take plain numbers (got unit {unit!r})")
    step = spec.get("step")
    if step is not None and log:
        raise SpaceError(f"{field}: give either step or log, not both")
    too_many = (f"{field}: more than {MAX_LEVELS:,} levels from low={lo} to high={hi}; "
                "use a larger step, or log: true")
    if log:
        n = num if num is not None else int(math.floor(math.log2(hi / lo))) + 1
        if n > MAX_LEVELS:
            raise SpaceError(too_many.replace(", or log: true", " or a smaller num"))
        vals = np.unique(np.round(np.geomspace(lo, hi, max(n, 1))).astype(np.int64))
        if len(vals) < n:  # rounding made some levels equal
            raise SpaceError(f"{field}.num: {n} log-spaced integers from {lo} to {hi} round "
                             f"to only {len(vals)} distinct levels ({', '.join(map(str, vals))}"
                             f"); use num: {len(vals)} or list the values")
    else:
        step = 1 if step is None else _num(f"{field}.step", step, True)
        if step < 1:
            raise SpaceError(f"{field}.step: {step} must be >= 1")
        if num is not None:
            raise SpaceError(f"{field}.num: for int axes use step (or log with num)")
        if (hi - lo) // step + 1 > MAX_LEVELS:
            raise SpaceError(too_many)
        vals = np.arange(lo, hi + 1, step, dtype=np.int64)
    return Axis(key, "int", values=tuple(int(v) for v in vals))


#: Levels an int axis may have (each is validated when the space is read).
MAX_LEVELS = 100_000


def from_dict(d: Mapping, source: str = "space") -> DesignSpace:
    """A :class:`DesignSpace` from a mapping (the parsed YAML)."""
    if not isinstance(d, Mapping):  # (load() puts the file's name before the message)
        raise SpaceError(f"the top level must be a mapping with keys {', '.join(_SPACE_KEYS)}")
    for k in d:
        if k not in _SPACE_KEYS:
            raise SpaceError(f"{k}: unknown key; allowed: {', '.join(_SPACE_KEYS)}")
    base = d.get("base") or {}
    if not isinstance(base, Mapping):
        raise SpaceError(f"base: {base!r} must be a mapping of configuration keys")
    axes_spec = d.get("axes")
    if not isinstance(axes_spec, Mapping) or not axes_spec:
        raise SpaceError(f"axes: {axes_spec!r}: a space needs a mapping of at least one axis "
                         "(key: {kind, low, high} or key: [values])")
    axes = [axis_from_spec(k, v) for k, v in axes_spec.items()]
    order = d.get("axis_order")  # a sweep manifest's space: the space file's axis order
    if isinstance(order, list) and sorted(map(str, order)) == sorted(axes_spec):
        axes.sort(key=lambda a: order.index(a.key))  # (a spec whose axes were replaced
        # keeps its old axis_order: then the mapping's own order stands)
    cons = d.get("constraints") or []
    if isinstance(cons, str):
        cons = [cons]
    if not isinstance(cons, list) or not all(isinstance(c, str) for c in cons):
        raise SpaceError(f"constraints: {cons!r} must be a list of expressions (strings)")
    constraints = [Constraint(c, f"constraints[{i}]") for i, c in enumerate(cons)]
    seed = d.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise SpaceError(f"seed: {seed!r} must be an integer >= 0")
    objectives = d.get("objectives") or {}
    if not isinstance(objectives, Mapping):
        raise SpaceError(f"objectives: {objectives!r} must be a mapping")
    _check_objectives(objectives, [a.key for a in axes])
    return DesignSpace(base=dict(base), axes=axes, constraints=constraints,
                       sampler=d.get("sampler", "grid"), num_samples=d.get("num_samples"),
                       seed=seed, name=str(d.get("name", source)), objectives=dict(objectives))


OBJECTIVE_KEYS = ("objective", "slo", "gpu_hour_usd", "mem_gb_hour_usd")


def _check_objectives(o: Mapping, axes: Sequence[str] = ()) -> None:
    """The ``objectives`` section is read by ``jaxsim best`` and ``pareto`` after a sweep;
    check it before anything runs, so a typo does not wait for the sweep's end: known
    keys, an objective and SLO metrics the results will hold, prices."""
    from jaxsim import presets
    from search import objectives as ob

    for k in o:
        if k not in OBJECTIVE_KEYS:
            raise SpaceError(f"objectives.{k}: unknown key; allowed: "
                             f"{', '.join('objectives.' + x for x in OBJECTIVE_KEYS)}")
    if "objective" in o and not isinstance(o["objective"], str):
        raise SpaceError(f"objectives.objective: {o['objective']!r} must be a metric name")
    try:
        if "objective" in o:
            ob.check_name("objectives.objective", o["objective"], axes)
        ob.checked_slo(o.get("slo"), label="objectives.slo", axes=axes)
        if "mem_gb_hour_usd" in o:
            ob._price("mem_gb_hour_usd", o["mem_gb_hour_usd"])
        g = o.get("gpu_hour_usd")
        if isinstance(g, Mapping):
            gpus = presets.gpu_names()
            for name, v in g.items():
                if str(name).lower() not in {x.lower() for x in gpus}:
                    raise SpaceError(f"objectives.gpu_hour_usd.{name}: not a GPU name; "
                                     f"allowed: {', '.join(gpus)}")
                ob._price(f"gpu_hour_usd.{name}", v)
        elif g is not None:
            ob._price("gpu_hour_usd", g)
    except ob.ObjectiveError as e:
        raise SpaceError(f"objectives: {e}") from None


def load(path: str) -> DesignSpace:
    """Read a space file (YAML)."""
    raw = config_mod.read_yaml(path, SpaceError)
    try:
        return from_dict(raw, source=path)
    except SpaceError as e:
        raise SpaceError(f"{path}: {e}") from None

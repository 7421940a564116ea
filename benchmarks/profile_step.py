"""Where a step's time goes: an XLA profile of the core scenario's compiled chunk.

    python benchmarks/profile_step.py [--batch 1024] [--top 25] [--macro K] [--priority]

Runs the core scenario (``jaxsim.bench``) for B lanes, traces three chunks of 64 steps
with ``jax.profiler.trace``, and sums the duration of every compiled operation by name
(over all threads, so a 2-core machine can show up to twice the wall time). Prints the
wall time per lane-step, the kernel time per lane-step by kind of operation
(reduce-window is ``cumsum`` on CPU; concatenate comes from stacking per-lane scalars),
the number of distinct operations in a step, and the largest ones. ``--by-source`` also
sums the kernel time by the jaxsim function that built each operation, read from the
stack frames XLA keeps in the optimised HLO (double-float helpers are charged to their
callers). ``--priority`` profiles priority scheduling instead (docs/semantics.md §10: the
same trace with a fifth of its requests at priority 0, drawn as
``benchmarks/priority_compare.py`` draws them, under ``scheduling_policy: priority``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

KINDS = ("reduce-window", "concatenate", "gather", "scatter", "sort", "dot")
#: Helper modules whose operations are charged to the jaxsim function that called them.
HELPERS = ("dd.py", "timeutil.py", "scan.py")


def source_of_ops(hlo_text: str) -> dict[str, str]:
    """Operation name -> ``file:function`` of the innermost jaxsim frame that built it
    (frames in :data:`HELPERS`, the double-float and time helpers, are skipped so their
    cost lands on the caller), from the stack-frame tables of an optimised HLO module's
    text. Operations without a jaxsim frame map to ``"(no jaxsim frame)"``.

    Older JAX (before the stack-frame tables, e.g. 0.7) records only the innermost
    frame's ``source_file`` and ``source_line``; then the key is ``file:line`` of that
    frame when it is in jaxsim, helpers included (their callers are not recorded)."""
    import re

    sections: dict[str, dict[int, str]] = {}
    current = None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = sections.setdefault(line, {})
            continue
        m = re.match(r"(\d+) (.*)$", line) if current is not None else None
        if m is None:
            current = None
            continue
        current[int(m.group(1))] = m.group(2)
    files = {k: v.strip('"') for k, v in sections.get("FileNames", {}).items()}
    funcs = {k: v.strip('"') for k, v in sections.get("FunctionNames", {}).items()}
    locs = {}
    for k, v in sections.get("FileLocations", {}).items():
        f = int(re.search(r"file_name_id=(\d+)", v).group(1))
        g = int(re.search(r"function_name_id=(\d+)", v).group(1))
        locs[k] = (files.get(f, "?"), funcs.get(g, "?"))
    frames = {}
    for k, v in sections.get("StackFrames", {}).items():
        loc = int(re.search(r"file_location_id=(\d+)", v).group(1))
        parent = int(re.search(r"parent_frame_id=(\d+)", v).group(1)) - 1  # printed 1-based
        frames[k] = (loc, parent)

    def owner(fid: int) -> str:
        seen = set()
        while fid in frames and fid not in seen:
            seen.add(fid)
            loc, fid = frames[fid]
            path, func = locs.get(loc, ("?", "?"))
            if "/jaxsim/" in path and not path.endswith(HELPERS):
                return f"{os.path.basename(path)}:{func}"
        return "(no jaxsim frame)"

    def tag(text: str) -> str | None:
        """The owner named by one instruction's metadata, or None without any."""
        f = re.search(r"stack_frame_id=(\d+)", text)
        if f:
            return owner(int(f.group(1)))
        f = re.search(r'source_file="([^"]*)" source_line=(\d+)', text)
        if f:
            return (f"{os.path.basename(f.group(1))}:{f.group(2)}"
                    if "/jaxsim/" in f.group(1) else "(no jaxsim frame)")
        return None

    # a fusion that lost its own metadata (XLA's wrapped reduce-windows) takes the owner
    # of the first instruction with metadata inside the computation it calls
    comp_tag, comp = {}, None
    for line in hlo_text.splitlines():
        m = re.match(r"%?([\w.\-]+) \(.*\{$", line)
        if m:
            comp = m.group(1)
        if comp is not None and comp not in comp_tag:
            t = tag(line)
            if t is not None:
                comp_tag[comp] = t
    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$", hlo_text, re.M):
        t = tag(m.group(2))
        c = re.search(r"calls=%?([\w.\-]+)", m.group(2))
        t = t if t is not None else comp_tag.get(c.group(1)) if c else None
        if t is not None:
            out[m.group(1)] = t
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--macro", type=int, default=None,
                    help="SimShape.macro_iterations (default: the benchmark's)")
    ap.add_argument("--by-source", action="store_true",
                    help="also sum the kernel time by the jaxsim function that built each "
                         "operation (from the optimised HLO's stack frames)")
    ap.add_argument("--priority", action="store_true",
                    help="a fifth of the requests at priority 0, scheduling_policy: priority")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from jaxsim import bench, sim

    B, L, chunks = args.batch, 64, 3
    prep, params = bench._prepare(1000, B, macro=args.macro, priority=args.priority)
    shape = dataclasses.replace(prep.shape, chunk_iterations=L,
                                priority_levels=2 if args.priority else 0)
    state = sim._init_batch(shape, params, prep.workload, jnp.int32(10**6), False)
    state, _, _ = sim._run_chunk_batch(shape, params, prep.workload, state, False)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(chunks):
        state, _, _ = sim._run_chunk_batch(shape, params, prep.workload, state, False)
    jax.block_until_ready(state)
    wall = (time.perf_counter() - t0) / (chunks * L)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(chunks):
                state, _, _ = sim._run_chunk_batch(shape, params, prep.workload, state, False)
            jax.block_until_ready(state)
        path = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("ThunkExecutor", "$", "while")):
            continue
        total[name] += e["dur"]
        count[name] += 1
    steps = chunks * L
    per_lane = {k: v / steps / B * 1e3 for k, v in total.items()}  # ns per lane-step
    kinds = collections.Counter()
    for k, v in per_lane.items():
        kinds[next((x for x in KINDS if x in k), "other (elementwise and reductions)")] += v
    print(f"B = {B}: {wall * 1e3:.2f} ms per step, {wall / B * 1e6:.2f} us per lane-step "
          f"(wall); kernel time {sum(per_lane.values()) / 1e3:.2f} us per lane-step "
          f"(all threads), {len(total)} distinct operations")
    for k, v in kinds.most_common():
        print(f"  {k:36s} {v:7.0f} ns per lane-step")
    print("largest operations (ns per lane-step, calls per step):")
    for k, v in sorted(per_lane.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {v:7.1f}  {count[k] / steps:5.1f}x  {k[:80]}")
    if args.by_source:
        hlo = sim._run_chunk_batch.lower(shape, params, prep.workload, state,
                                         False).compile().as_text()
        src = source_of_ops(hlo)
        by_src, n_ops = collections.Counter(), collections.Counter()
        for k, v in per_lane.items():
            where = src.get(k, "(cumsum: XLA keeps no source for reduce-windows)"
                            if "reduce-window" in k else "(host: dispatch of the chunk)"
                            if k.startswith("PjitFunction") else
                            "(no source kept: copies and slices XLA inserted)")
            by_src[where] += v
            n_ops[where] += 1
        kernel = sum(per_lane.values())
        print("kernel time by the jaxsim function that built the operation "
              "(ns per lane-step, share, operations):")
        for k, v in by_src.most_common():
            print(f"  {v:7.0f}  {100 * v / kernel:5.1f}%  {n_ops[k]:4d}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

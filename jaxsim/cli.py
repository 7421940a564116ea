"""Command-line interface: ``jaxsim simulate | presets | demo | bench | profile | calibrate |
sweep | best | pareto``.

Every bad input (YAML key or value, ``--set``, trace file) ends in one line on stderr,
``jaxsim: error: <field>: <value> <what is allowed>``, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

EXIT_USAGE = 2

#: Keys ``jaxsim simulate --json`` always prints (plus every other metric).
JSON_KEYS = (
    "ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "tpot_mean_s", "tpot_p50_s", "tpot_p99_s",
    "e2e_mean_s", "e2e_p50_s", "e2e_p99_s", "throughput_rps", "output_tps", "preemptions",
    "completed", "status", "prefix_hit_rate", "hit_rate_by_tier",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"jaxsim: error: {message}\n")


def _fail(msg: str) -> int:
    """Print one error line (a newline inside a value is shown escaped) and return 2."""
    print("jaxsim: error: " + str(msg).replace("\r", "\\r").replace("\n", "\\n"),
          file=sys.stderr)
    return EXIT_USAGE


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


#: Columns of ``jaxsim simulate --requests`` (then ``priority`` when the trace gives
#: requests priorities, and ``load_s`` and ``prefill_s`` with the prefix cache compiled in).
REQUEST_COLUMNS = ("request", "arrival_s", "prompt_tokens", "output_tokens", "completed",
                   "queue_s", "ttft_s", "tpot_s", "e2e_s", "preemptions", "tokens_scheduled")


def write_requests(path: str, trace, req: dict) -> None:
    """One CSV row per request of a simulated trace, in arrival order: ``request`` is the
    row's index in that order, ``arrival_s`` relative to the first arrival; the times of a
    request that did not complete are empty, and so is ``tpot_s`` of a one-token output
    (as the metrics leave them out). ``priority`` follows the fixed columns when the trace
    has priorities (``workload.priority_mix`` or a priority column)."""
    import csv

    import numpy as np

    from jaxsim import fileio

    o = trace.order()
    arrival = trace.arrival_s[o] - trace.arrival_s[o[0]]
    prompt, output = trace.prompt_tokens[o], trace.output_tokens[o]
    done = np.asarray(req["completed"], bool)
    tpot = req["decode_s"] / np.maximum(output - 1, 1)
    extra = [k for k in ("load_s", "prefill_s") if k in req]
    prio = [] if trace.priority is None else ["priority"]
    level = None if trace.priority is None else trace.priority[o]

    def t(x, ok):
        return repr(float(x)) if ok else ""

    with fileio.atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*REQUEST_COLUMNS, *prio, *extra])
        for i in range(len(arrival)):
            d = bool(done[i])
            w.writerow([i, repr(float(arrival[i])), int(prompt[i]), int(output[i]), int(d),
                        t(req["queue_s"][i], d), t(req["ttft_s"][i], d),
                        t(tpot[i], d and output[i] > 1), t(req["e2e_s"][i], d),
                        int(req["preemptions"][i]), int(req["tokens_scheduled"][i]),
                        *([] if level is None else [int(level[i])]),
                        *(t(req[k][i], d) for k in extra)])


def cmd_simulate(args) -> int:
    from jaxsim import api, config, traces

    try:
        cfg = config.load(args.config, args.set or [])
        trace = config.build_trace(cfg)
        # one replica's memory (of a disaggregated deployment: a prefill instance's)
        prep = api.prepare({**cfg, "num_replicas": 1,
                            "disaggregation": {**cfg["disaggregation"], "enabled": False}},
                           trace)
    except (config.ConfigError, traces.TraceError) as e:
        return _fail(str(e))
    if args.requests:  # before the simulation, whose result would be lost
        from jaxsim import fileio

        why = fileio.cannot_write(args.requests)
        if why:
            return _fail(f"--requests: {args.requests}: {why}")
    from jaxsim import status as st_bits

    res = api.run(cfg, trace)
    if args.requests:
        write_requests(args.requests, trace, res.requests(0))
    out = res.lane(0)
    out["status_bits"] = int(res.status[0])
    for k in ("weights_gb", "kv_gb", "num_gpu_blocks", "max_model_len"):
        v = prep.info[k][0]
        out[k] = float(v) if k.endswith("gb") else int(v)
    out["model"], out["gpu"], out["tp"] = cfg["model"], cfg["gpu"], cfg["tp"]
    out["num_replicas"], out["router"] = cfg["num_replicas"], cfg["router"]
    dg = cfg["disaggregation"]
    out["num_gpus"] = cfg["tp"] * (dg["prefill_replicas"] + dg["decode_replicas"]
                                   if dg["enabled"] else cfg["num_replicas"])
    out["disaggregated"] = dg["enabled"]
    if dg["enabled"]:
        out["prefill_replicas"], out["decode_replicas"] = (dg["prefill_replicas"],
                                                           dg["decode_replicas"])
    out["scheduler"] = cfg["scheduler"]
    out["workload"] = trace.name
    out["num_requests"] = len(trace)

    def shares(r, i: int, num: int) -> list[int]:
        per = [0] * num
        for k, j in zip(r.replica_ids[i], r.replica_lanes[i], strict=True):
            per[int(k)] = int(r.per_replica.metrics["num_requests"][j])
        return per

    if dg["enabled"]:
        pre, dec, j = res.pools["prefill"], res.pools["decode"], res.pools["decode_of"][0]
        out["requests_per_prefill_replica"] = shares(pre, 0, dg["prefill_replicas"])
        out["requests_per_decode_replica"] = ([0] * dg["decode_replicas"] if j is None
                                              else shares(dec, j, dg["decode_replicas"]))
        per_replica = out["requests_per_prefill_replica"]
    elif res.replica_lanes:
        per_replica = shares(res, 0, cfg["num_replicas"])
    else:
        per_replica = [len(trace)]
    out["requests_per_replica"] = per_replica
    out["status_reasons"] = res.reasons(0)
    out["wall_s"] = res.wall_s
    names = ["hbm", *cfg["tiers"]]
    out["hit_rate_by_tier"] = {n: out.pop(f"hit_rate_tier{t}", 0.0)
                               for t, n in enumerate(names)}
    for t, n in enumerate(names):
        for kind in ("read", "written"):
            if f"bytes_{kind}_tier{t}" in out:
                out[f"bytes_{kind}_{n}"] = out.pop(f"bytes_{kind}_tier{t}")
        out[f"peak_blocks_{n}"] = out.pop(f"peak_blocks_tier{t}", 0)
    if len(names) > 1:  # §5.9: NaN (null) where a tier has no power or pJ/bit figure
        out["energy_j_by_tier"] = {n: out.pop(f"energy_j_tier{t}")
                                   for t, n in enumerate(names) if t > 0}
    if args.json:
        for k in ("hit_rate_by_tier", "energy_j_by_tier"):
            if k in out:
                out[k] = {n: _jsonable(v) for n, v in out[k].items()}
        print(json.dumps({k: _jsonable(v) for k, v in out.items()}))
        return 0
    fleet = (f"{dg['prefill_replicas']} prefill + {dg['decode_replicas']} decode instances "
             f"of {cfg['tp']}x {cfg['gpu']} ({cfg['router']}; KV link "
             f"{dg['kv_link_gbs']:g} GB/s per GPU)" if dg["enabled"] else
             f"{cfg['num_replicas']} replicas of {cfg['tp']}x {cfg['gpu']} "
             f"({cfg['router']}, requests per replica "
             f"{min(out['requests_per_replica'])}-{max(out['requests_per_replica'])})"
             if cfg["num_replicas"] > 1 else f"{cfg['tp']}x {cfg['gpu']}")
    print(f"jaxsim: {cfg['model']} on {fleet}, scheduler {cfg['scheduler']}, "
          f"{len(trace)} requests ({trace.name})")
    print(f"  KV cache: {out['num_gpu_blocks']} blocks of {cfg['block_size']} tokens "
          + ("per replica " if cfg["num_replicas"] > 1 or dg["enabled"] else "")
          + f"({out['kv_gb']:.1f} GB); weights {out['weights_gb']:.1f} GB per GPU; "
          f"max_model_len {out['max_model_len']}")
    print(f"  status: {out['status']}   completed {out['completed']}/{len(trace)}   "
          f"preemptions {out['preemptions']}   iterations {out['iterations']}")
    for reason in out["status_reasons"]:
        print(f"  why: {reason}")
    if out["status_bits"] & st_bits.INFEASIBLE:
        return 0  # nothing was simulated: no latency or throughput to show
    rows = [("TTFT", "ttft"), ("TPOT", "tpot"), ("E2E", "e2e"), ("queueing", "queue")]
    print(f"  {'latency (ms)':<14}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}")
    for label, key in rows:
        vals = [out[f"{key}_{s}_s"] * 1e3 for s in ("mean", "p50", "p90", "p99")]
        print(f"  {label:<14}" + "".join(f" {v:>9.2f}" for v in vals))  # a space always
    print(f"  throughput {out['throughput_rps']:.3f} req/s, input {out['input_tps']:.1f} tok/s, "
          f"output {out['output_tps']:.1f} tok/s; goodput {out['goodput_rps']:.3f} req/s "
          f"(TTFT <= {cfg['slo']['ttft_s']} s, TPOT <= {cfg['slo']['tpot_s']} s)")
    if dg["enabled"]:
        print(f"  KV transfer, prefill end to decode arrival (ms): mean "
              f"{out['kv_transfer_mean_s'] * 1e3:.2f}, p50 {out['kv_transfer_p50_s'] * 1e3:.2f}"
              f", p99 {out['kv_transfer_p99_s'] * 1e3:.2f}, max "
              f"{out['kv_transfer_max_s'] * 1e3:.2f}")
    levels = sorted(int(k.removeprefix("completed_prio")) for k in out
                    if k.startswith("completed_prio"))
    if levels:  # docs/semantics.md §10: per priority level
        print(f"  by priority ({cfg['scheduling_policy']}; ms)  completed  TTFT p50  TTFT p99"
              "  TPOT p50  TPOT p99  preemptions")
        for p in levels:
            print(f"  level {p:<22}{out[f'completed_prio{p}']:>9}"
                  + "".join(f" {out[f'{k}_prio{p}'] * 1e3:>9.2f}"
                            for k in ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s"))
                  + f" {out[f'preemptions_prio{p}']:>12}")
    spec = cfg["speculative"]
    if spec["num_tokens"] > 0:
        rate = out["spec_acceptance_rate"]
        print(f"  speculative decoding ({spec['method']}, K={spec['num_tokens']}): drafted "
              f"{out['spec_drafted_tokens']}, accepted {out['spec_accepted_tokens']} "
              f"(rate {rate:.3f})" if rate == rate else
              f"  speculative decoding ({spec['method']}, K={spec['num_tokens']}): no draft "
              "scheduled")
    if cfg["enable_prefix_caching"]:
        by_tier = ", ".join(f"{n} {v:.3f}" for n, v in out["hit_rate_by_tier"].items())
        print(f"  prefix cache: hit rate {out['prefix_hit_rate']:.3f} ({by_tier}); transfers "
              f"exposed {out['xfer_exposed_s']:.3f} s, hidden {out['xfer_hidden_s']:.3f} s")
        if "ttft_load_mean_s" in out:
            print(f"  TTFT split (mean ms): queueing {out['queue_mean_s'] * 1e3:.2f}, load "
                  f"{out['ttft_load_mean_s'] * 1e3:.2f}, prefill "
                  f"{out['ttft_prefill_mean_s'] * 1e3:.2f}")
        if cfg["preemption_mode"] == "swap" or cfg["cache"]["prefetch"]:
            print(f"  swap-outs {out['swaps']} (preemption_mode {cfg['preemption_mode']}); "
                  f"prefetched blocks {out['prefetched_blocks']}")
        if "energy_j_by_tier" in out:
            print("  tier energy (J): " + ", ".join(
                f"{n} {v:.1f}" if math.isfinite(v) else f"{n} unknown (set "
                f"tier.{n}.static_power_w and tier.{n}.energy_pj_per_bit)"
                for n, v in out["energy_j_by_tier"].items()))
    print(f"  KV occupancy mean {out['kv_occupancy_mean']:.3f}, peak "
          f"{out['kv_occupancy_peak']:.3f}; simulated in {res.wall_s:.2f} s")
    return 0


def cmd_presets(args) -> int:
    from jaxsim import presets

    print(presets.table())
    return 0


def cmd_demo(args) -> int:
    from jaxsim import demo

    if args.num_requests < 1:
        return _fail(f"--num-requests: {args.num_requests} must be >= 1")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return _fail(f"--out: {args.out} exists and is not a folder")
    try:  # before the sweep, which would otherwise run for nothing
        os.makedirs(args.out, exist_ok=True)
        probe = os.path.join(args.out, f".jaxsim-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as e:
        return _fail(f"--out: {args.out}: cannot write there ({e.strerror or e})")
    return demo.main(out_dir=args.out, num_requests=args.num_requests, quiet=False)


def cmd_bench(args) -> int:
    from jaxsim import bench

    if args.slots < 1:
        return _fail(f"--slots: {args.slots} must be >= 1")
    result = bench.run(quick=args.quick, verbose=not args.json, slots=args.slots)
    if args.json:
        print(json.dumps({k: _jsonable(v) for k, v in result.items()}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jaxsim", description="Vectorised LLM-serving simulator.")
    from jaxsim import __version__

    p.add_argument("--version", action="version", version=f"jaxsim {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("simulate", help="simulate one configuration and print its metrics")
    s.add_argument("config", nargs="?", help="YAML configuration file (optional)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key, e.g. --set max_num_seqs=64 --set workload.rate=5")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--requests", metavar="FILE.csv",
                   help="also write one row per request (arrival, lengths, queueing, TTFT, "
                        "TPOT, E2E, preemptions) to this CSV file")
    s.set_defaults(func=cmd_simulate)
    pr = sub.add_parser("presets", help="list model and GPU presets with their sources")
    pr.set_defaults(func=cmd_presets)
    d = sub.add_parser("demo", help="sweep >= 1024 configurations on a real trace",
                       description="Sweep 1,120 configurations of Llama-3.1-70B (GPU x TP x "
                       "max_num_seqs x max_num_batched_tokens) on the bundled Azure "
                       "conversation trace; print the best that meet a latency SLO and write "
                       "results.csv and latency_map.png.")
    d.add_argument("--out", default="demo_out",
                   help="output folder (table + plot; default demo_out)")
    d.add_argument("--num-requests", type=int, default=300,
                   help="requests taken from the bundled Azure conversation trace "
                        "(default 300)")
    d.set_defaults(func=cmd_demo)
    b = sub.add_parser("bench", help="run the core benchmark")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--quick", action="store_true", help="smaller batches (smoke test)")
    b.add_argument("--slots", type=int, default=64, help="slot-table size S (default 64)")
    b.set_defaults(func=cmd_bench)
    from calibration import cli as calibration_cli
    from jaxsim import profile

    pf = sub.add_parser("profile", help="measure kernel timings on the local accelerator")
    profile.add_arguments(pf)
    pf.set_defaults(func=profile.cmd)
    c = sub.add_parser("calibrate", help="fit the cost model to measured timings")
    calibration_cli.add_arguments(c)
    c.set_defaults(func=calibration_cli.cmd)
    from search import cli as search_cli

    sw = sub.add_parser("sweep", help="simulate every configuration of a design space")
    search_cli.add_sweep_arguments(sw)
    sw.set_defaults(func=search_cli.cmd_sweep)
    be = sub.add_parser("best", help="rank a sweep's results under SLOs; export the winner")
    search_cli.add_best_arguments(be)
    be.set_defaults(func=search_cli.cmd_best)
    pa = sub.add_parser("pareto", help="Pareto front of a sweep's results")
    search_cli.add_pareto_arguments(pa)
    pa.set_defaults(func=search_cli.cmd_pareto)
    sub.metavar = "{" + ",".join(sub.choices) + "}"  # a missing command lists them
    return p


#: Commands that simulate large batches: on a CPU they split it over one device per core.
BATCH_COMMANDS = ("demo", "bench", "sweep")


def use_every_core() -> int:
    """Make the CPU backend one JAX device per usable core (``jax_num_cpu_devices``),
    unless the user chose a count (``JAX_NUM_CPU_DEVICES`` or ``XLA_FLAGS``) or a backend
    is already running. ``simulate_batch`` splits its lanes over the devices: on a 2-core
    machine the core benchmark runs about 1.2-1.5x faster than one device using both
    cores (benchmarks/README.md). Returns the count set, or 0 when left alone."""
    import os

    import jax

    if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or jax.config.jax_num_cpu_devices != -1):
        return 0
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    if n <= 1:
        return 0
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # a backend is already initialised: leave it
        return 0
    return n


def use_compile_cache() -> str | None:
    """Keep compiled executables on disk between runs of the command line (JAX's
    persistent compilation cache), in ``$XDG_CACHE_HOME/jaxsim/xla`` (default
    ``~/.cache/jaxsim/xla``), at most 1 GiB, least recently used first out. A second
    ``jaxsim simulate`` of the same shapes then loads its executables instead of
    compiling them (README: Performance). ``JAX_COMPILATION_CACHE_DIR`` set in the
    environment wins (an empty value turns the cache off). Returns the folder used, or
    None when left alone."""
    import os

    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return None
    import jax

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".cache")
    path = os.path.join(base, "jaxsim", "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # read-only home: compile every time, as without the cache
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    try:
        import filelock  # noqa: F401  (JAX's cache evicts only with it)
    except ImportError:  # an install without it: the cache works, unbounded
        return path
    if jax.config.jax_compilation_cache_max_size == -1:
        jax.config.update("jax_compilation_cache_max_size", 1024**3)
    heal_compile_cache(path)
    return path


def heal_compile_cache(path: str) -> int:
    """Give every entry of a JAX compilation cache folder its last-use file.

    With a size limit, JAX keeps each entry ``<key>-cache`` beside ``<key>-atime`` (its
    last use, nanoseconds, 8 bytes little-endian) and, before every write, reads the
    ``-atime`` of every entry to find the least recently used. Entries written without a
    size limit (an install without filelock, or another program pointed at the same
    folder) have no such file, and then every later write fails with a warning and the
    new executable is not kept. This writes the missing files, dated by the entry's
    modification time. Returns how many it wrote (0 where the folder is unreadable)."""
    import os

    made = 0
    try:
        names = set(os.listdir(path))
    except OSError:
        return 0
    for name in names:
        atime = f"{name.removesuffix('-cache')}-atime"
        if not name.endswith("-cache") or atime in names:
            continue
        try:
            ns = os.stat(os.path.join(path, name)).st_mtime_ns
            with open(os.path.join(path, atime), "xb") as f:
                f.write(ns.to_bytes(8, "little"))
            made += 1
        except OSError:  # removed meanwhile, written by another process, or read-only
            continue
    return made


def _show_warning(message, category, filename, lineno, file=None, line=None,
                  _default=warnings.showwarning):
    """jaxsim's own warnings as one line (``jaxsim: warning: ...``), without the source
    line Python prints under a warning; other warnings as Python prints them."""
    if category.__module__.split(".")[0] in ("jaxsim", "search", "calibration"):
        print(f"jaxsim: warning: {message}", file=sys.stderr if file is None else file)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the command line, not a caller
        if args.command != "bench":  # the benchmark measures compile time
            use_compile_cache()
        if args.command in BATCH_COMMANDS:
            use_every_core()
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`)
        import os

        # the interpreter flushes stdout again at exit: point it at /dev/null first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (output files are
        # written to a temporary name and renamed, so none is left half-written)
        print(f"\njaxsim {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())

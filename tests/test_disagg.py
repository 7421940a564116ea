"""Disaggregated prefill and decode (docs/semantics.md §8).

The oracle: the prefill pool's replicas (one output token per request), the FIFO KV
transfers and the decode pool's replicas (requests that bring the KV of P - 1 prompt
tokens) each built here from the semantics text and simulated by the reference
simulator, the per-request results put together and the metrics computed over the
whole requests by the reference's own metric code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxsim import api, disagg, replicas, simulate_batch
from jaxsim import config as config_mod
from jaxsim import params as P
from jaxsim import status as st_bits
from jaxsim.shapes import SimShape
from jaxsim.workload import Trace, to_workload
from tests.helpers import (
    fleet_errors,
    lane_params,
    oracle_config,
    oracle_workload,
    scalar_close,
)
from tests.reference.event_sim import lane_metrics, simulate_reference
from tests.test_against_reference import random_case

#: Hand-worked (§8, §2.3 rule 4): two requests of 64 prompt tokens that bring the KV of
#: 63 arrive together at a decode instance of 7 blocks of 16 tokens. The first takes
#: ceil(64 / 16) = 4 blocks for its one token; the second needs 4 more and waits (3
#: free). Iteration 2 decodes the first (a fifth block, ceil(65 / 16)); it finishes, and
#: the second is admitted in iteration 3 and finishes in iteration 4. Every request
#: schedules 2 tokens; without its KV the first would compute all 64 at once.
BRINGS_KV = (Trace([0.0, 0.0], [64, 64], [2, 2], external_tokens=[63, 63]),
             {"num_gpu_blocks": 7, "block_size": 16, "max_model_len": 80, "watermark": 0.0})


def test_disagg__a_request_that_brings_its_kv_in_the_reference():
    trace, cfg = BRINGS_KV
    p = lane_params(cfg, trace)
    ref = simulate_reference(oracle_workload(trace), oracle_config(p), trace=(it := []))
    assert [[(q, c) for _, q, c, *_ in x["batch"]] for x in it] == [
        [(1, 63)], [(1, 64)], [(1, 63)], [(1, 64)]]
    assert [x["used_blocks"] for x in it] == [4, 5, 4, 5]
    assert list(ref["tokens_scheduled"]) == [2, 2]
    np.testing.assert_allclose(ref["queue_s"][1], ref["finish_s"][0], rtol=1e-12)
    # without the KV: 64 tokens in the first iteration
    plain = simulate_reference(oracle_workload(Trace([0.0, 0.0], [64, 64], [2, 2])),
                               oracle_config(p))
    assert list(plain["tokens_scheduled"]) == [65, 65]
    assert plain["ttft_s"][0] > ref["ttft_s"][0]


@pytest.mark.slow  # its own small shape compiles (about 20 s): CI's slow step; the
# default oracle checks requests that bring KV on 35% of its random lanes
def test_disagg__a_request_that_brings_its_kv_computes_one_token_in_its_blocks():
    trace, cfg = BRINGS_KV
    p = lane_params(cfg, trace)
    shape = SimShape(max_requests=2, max_slots=4, macro_iterations=16)
    res = simulate_batch(shape, P.stack([p]), to_workload(trace))
    per = res.requests(0)
    assert int(res.status[0]) == 0
    np.testing.assert_array_equal(per["tokens_scheduled"], [2, 2])
    assert int(res.metrics["iterations"][0]) == 4
    e2e0 = float(per["ttft_s"][0] + per["decode_s"][0])
    assert per["queue_s"][0] == 0.0
    np.testing.assert_allclose(per["queue_s"][1], e2e0, rtol=1e-6)
    ref = simulate_reference(oracle_workload(trace), oracle_config(p))
    np.testing.assert_allclose(per["ttft_s"], ref["ttft_s"], rtol=1e-6)


def _fifo(end: np.ndarray, rep: np.ndarray, nbytes: np.ndarray, gbs: float, lat_us: float):
    """§8 transfers, written out again: per prefill replica, in order of prefill end."""
    out = np.full(len(end), np.nan)
    for k in set(rep.tolist()):
        free = -np.inf
        for i in sorted(np.flatnonzero(rep == k), key=lambda i: (end[i], i)):
            if np.isfinite(end[i]):
                free = max(end[i], free) + nbytes[i] / (gbs * 1e9)
                out[i] = free + lat_us * 1e-6
    return out


def _route(n: int, num: int, router: str, trace: Trace, seed: int) -> np.ndarray:
    if router == "random":
        return replicas.assign(trace, num, "random", seed)
    return np.arange(n) % num  # these traces have no block ids: prefix_hash is round robin


def _oracle(trace: Trace, cfg: dict) -> dict:
    full = config_mod.validate(cfg)
    dg = full["disaggregation"]
    o = trace.order()
    n = len(trace)
    A, Pt, Ot = trace.arrival_s[o], trace.prompt_tokens[o], trace.output_tokens[o]
    tot = {"iterations": 0, "total_preemptions": 0, "total_tokens": 0}
    flags = {"infeasible": False, "truncated": False}

    def pool(pcfg, arrival, outputs, ext, assignment):
        first, finish = np.full(n, np.nan), np.full(n, np.nan)
        queue, done = np.full(n, np.nan), np.zeros(n, bool)
        p = lane_params(pcfg, Trace(A, Pt, Ot))  # max_model_len is the whole workload's
        for k in np.unique(assignment[np.isfinite(arrival)]):
            idx = np.flatnonzero((assignment == k) & np.isfinite(arrival))
            w = {"arrival_s": arrival[idx], "prompt_tokens": Pt[idx],
                 "output_tokens": outputs[idx], "external_tokens": ext[idx]}
            ref = simulate_reference(w, oracle_config(p), full["max_iterations"])
            first[idx], finish[idx] = ref["first_token_s"], ref["finish_s"]
            queue[idx], done[idx] = ref["queue_s"], ref["completed"]
            for key in tot:
                tot[key] += ref[key]
            for key in flags:
                flags[key] |= ref[key]
        return first, finish, queue, done, p

    pre_rep = _route(n, dg["prefill_replicas"], full["router"], disagg.prefill_trace(trace),
                     full["seed"])
    _, end, q_pre, _, p = pool(disagg.prefill_config(full), A, np.ones(n, np.int64),
                               np.zeros(n, np.int64), pre_rep)
    kv = (2.0 * int(p.model.num_layers) * max(float(p.model.num_kv_heads)
                                              / int(p.scheduler.tp), 1.0)
          * int(p.model.head_dim) * float(p.model.bytes_per_kv))
    bs = int(p.scheduler.block_size)
    arr_d = _fifo(end, pre_rep, -(-Pt // bs) * bs * kv, dg["kv_link_gbs"],
                  dg["kv_link_latency_us"])
    # the proxy picks the decode instance as prefills end (ties: arrival order)
    d_order = np.lexsort((np.arange(n), np.where(np.isfinite(end), end, np.inf)))
    d_order = d_order[np.isfinite(end[d_order])]
    dec_rep = np.zeros(n, np.int64)
    if d_order.size:
        by_end = Trace(np.arange(d_order.size, dtype=float), Pt[d_order], Ot[d_order])
        dec_rep[d_order] = _route(len(d_order), dg["decode_replicas"], full["router"],
                                  by_end, full["seed"])
    first, finish, q_dec, done, _ = pool(disagg.decode_config(full), arr_d, Ot, Pt - 1,
                                         dec_rep)
    m = lane_metrics(A, Pt, Ot, first, finish, A + q_pre + q_dec, done,
                     full["slo"]["ttft_s"], full["slo"]["tpot_s"])
    return {**m, **tot, **flags, "num_completed": int(done.sum()), "first": first,
            "finish": finish, "xfer": arr_d - end}


#: Two hand-worked deployments run in the same call as the random ones (one compile).
TRUNCATED_CASE = (Trace(np.zeros(3), np.full(3, 16), np.full(3, 2)),
                  {"max_num_seqs": 8, "max_iterations": 4,
                   "disaggregation": {"enabled": True, "kv_link_gbs": 0.01}})
PROXY_CASE = (Trace([0.0, 0.5], [2000, 16], [3, 5]),
              {"disaggregation": {"enabled": True, "prefill_replicas": 2,
                                  "decode_replicas": 2, "kv_link_gbs": 0.2}})


@pytest.fixture(scope="module")
def batch():
    """Ten random disaggregated deployments, then TRUNCATED_CASE and PROXY_CASE, in one
    jaxsim.api.run call."""
    rng = np.random.default_rng(20261125)
    cases = []
    for _ in range(10):
        trace, cfg = random_case(rng)
        if cfg["scheduler"] == "v0":  # disaggregation is v1's
            cfg["scheduler"] = "v1"
        cfg["disaggregation"] = {
            "enabled": True, "prefill_replicas": int(rng.choice([1, 2, 3])),
            "decode_replicas": int(rng.choice([1, 2, 3])),
            # slow links, so that transfers queue
            "kv_link_gbs": float(rng.choice([0.05, 1.0, 23.75])),
            "kv_link_latency_us": float(rng.choice([0.0, 2.26, 500.0]))}
        cfg["router"] = str(rng.choice(["round_robin", "random"]))
        cfg["seed"] = int(rng.integers(0, 100))
        cases.append((trace, cfg))
    cases += [TRUNCATED_CASE, PROXY_CASE]
    return cases, api.run([c for _, c in cases], [t for t, _ in cases])


def test_disagg__pools_match_the_reference(batch):
    cases, res = batch
    failures, feasible, queued = [], 0, 0
    for i, (trace, cfg) in enumerate(cases[:-1]):  # the proxy case is checked below
        ref = _oracle(trace, cfg)
        status = int(res.status[i])
        errs = []
        if status & st_bits.INFEASIBLE or ref["infeasible"]:
            if bool(status & st_bits.INFEASIBLE) != ref["infeasible"] and not (
                    status & st_bits.INF_NO_KV_MEMORY):
                failures.append(f"case {i}: infeasible {status} vs {ref['infeasible']}")
            continue
        feasible += 1
        m = {k: v[i] for k, v in res.metrics.items()}
        errs += fleet_errors(status, m, ref, trace)
        x = ref["xfer"][np.isfinite(ref["xfer"])]
        if not scalar_close(m["kv_transfer_max_s"], x.max(), 1e-6, 1e-9):
            errs.append(f"kv_transfer_max_s {m['kv_transfer_max_s']} vs {x.max()}")
        nbytes_time = x.min()
        queued += bool(x.max() > nbytes_time * 1.5)
        if errs:
            failures.append(f"case {i} ({cfg}): " + "; ".join(errs[:4]))
    assert not failures, "\n".join(failures)
    assert feasible >= 6, feasible
    assert queued >= 2, queued  # transfers waited for the link in some cases
    assert res.metrics["preemptions"].max() > 0


def test_disagg__a_decode_pool_out_of_budget_truncates_the_deployment(batch):
    """Regression (TRUNCATED_CASE): only the decode pool runs out of its budget (3
    requests of 16 + 2 tokens at once, a slow link: the decode instance admits them one
    by one and needs 5 iterations); the deployment is truncated and says why with one
    instance's count."""
    _, res = batch
    i = 10
    assert int(res.metrics["completed"][i]) == 2
    assert res.status[i] & st_bits.TRUNCATED and not res.status[i] & st_bits.HALTED_MASK
    assert int(res.pools["prefill"].status[i]) == 0
    assert res.reasons(i) == ["the iteration budget ran out after 4 iterations "
                              "(max_iterations 4) with 2 requests completed; raise "
                              "max_iterations"]


def test_disagg__the_proxy_picks_the_decode_instance_when_the_prefill_ends(batch):
    """Hand-worked (§8 item 3, PROXY_CASE): request 0 (2,000 prompt tokens) ends its prefill first
    but its KV crawls over a 0.2 GB/s link (about 1.3 s); request 1 (16 tokens, on the
    other prefill instance) ends later and reaches the decode pool first. Round robin in
    order of prefill end sends request 0 to decode instance 0, request 1 to instance 1."""
    _, res = batch
    i = 11
    assert int(res.status[i]) == 0
    ttft = res.requests(i)["ttft_s"]
    assert ttft[0] > 1.3 and ttft[1] < 0.1  # request 1 is decoded first
    dec, j = res.pools["decode"], res.pools["decode_of"][i]
    by_replica = dict(zip(dec.replica_ids[j].tolist(),
                          dec.per_replica.metrics["tokens_scheduled"][dec.replica_lanes[j]],
                          strict=True))
    assert by_replica == {0: 3, 1: 5}  # 1 + (O - 1) tokens: request 0 on instance 0


def test_disagg__bad_input():
    with pytest.raises(ValueError, match=r"external_tokens\[1\] = 5; must be in 0..prompt"):
        Trace([0.0, 1.0], [8, 5], [2, 2], external_tokens=[7, 5])
    with pytest.raises(ValueError, match="external_tokens has 1 entries for 2 requests"):
        Trace([0.0, 1.0], [8, 5], [2, 2], external_tokens=[7])
    with pytest.raises(ValueError, match=r"external_tokens\[0\] = -1"):
        Trace([0.0], [8], [2], external_tokens=[-1])
    for bad, msg in (
            ({"scheduler": "v0"}, "disaggregation.enabled: true is not allowed with "
                                  "scheduler=v0"),
            ({"num_replicas": 2}, "num_replicas: 2 with disaggregation.enabled"),
            ({"disaggregation": {"enabled": True, "kv_link_gbs": -1}},
             r"disaggregation.kv_link_gbs: -1.0 must be > 0"),
            ({"disaggregation": {"enabled": True, "decode_replicas": 0}},
             "disaggregation.decode_replicas: 0"),
            ({"disaggregation": {"enabled": True, "prefill": 2}},
             "disaggregation.prefill: unknown key")):
        cfg = {"disaggregation": {"enabled": True}, **bad}
        with pytest.raises(config_mod.ConfigError, match=msg):
            config_mod.validate(cfg)
    with pytest.raises(ValueError, match="external_tokens with disaggregation.enabled"):
        api.run({"disaggregation": {"enabled": True}},
                Trace([0.0], [8], [2], external_tokens=[3]))
    with pytest.raises(ValueError, match="max_iterations: .* not supported with disagg"):
        api.run([{"disaggregation": {"enabled": True}}] * 2, Trace([0.0], [8], [2]),
                max_iterations=[3, 4])
    with pytest.raises(ValueError, match="cannot be combined with the prefix cache"):
        SimShape(max_requests=4, max_slots=4, cache_entries=8, hash_space=8,
                 external_kv=True)
    tr = Trace([0.0], [8], [2])
    on = {"disaggregation": {"enabled": True}}
    with pytest.raises(config_mod.ConfigError, match="in some configurations of this call"):
        api.run([on, {}], tr)
    with pytest.raises(config_mod.ConfigError, match="prepare.. builds one lane"):
        api.prepare(on, tr)
    from search import capacity

    with pytest.raises(config_mod.ConfigError, match="capacity_search does not search"):
        capacity.capacity_search([on], {"ttft_p99_s": 1.0})


@pytest.mark.slow  # compiles both pools for a 1,000-request trace: CI's slow step
def test_disagg__command_line(capsys):
    from jaxsim.cli import main

    rc = main(["simulate", "--set", "disaggregation.enabled=true", "--set",
               "disaggregation.decode_replicas=2", "--set", "workload.num_requests=300",
               "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_gpus"] == 3 and out["completed"] == 300
    assert out["prefill_replicas"] == 1 and out["decode_replicas"] == 2
    assert 0.0 < out["kv_transfer_mean_s"] < out["ttft_mean_s"]
    rc = main(["simulate", "--set", "disaggregation.enabled=true", "--set",
               "workload.num_requests=300"])
    text = capsys.readouterr().out
    assert "1 prefill + 1 decode instances" in text and "KV transfer" in text


@pytest.mark.slow  # compiles both pools and a colocated batch: CI's slow step
def test_disagg__sweep_rows_equal_api_run(tmp_path):
    """A sweep over the split of GPUs between the pools (and a colocated level): rows
    equal jaxsim.api.run's, num_gpus counts both pools, a constraint violator halts."""
    from search import objectives, runner, space

    sp = space.from_dict({
        "base": {"num_gpu_blocks": 400, "disaggregation": {"enabled": True},
                 "workload": {"kind": "poisson", "rate": 20.0, "num_requests": 40,
                              "prompt_tokens": 300, "output_tokens": 12}},
        "axes": {"disaggregation.enabled": [True, False],
                 "disaggregation.decode_replicas": [1, 2, 3]},
        "constraints": ["disaggregation.decode_replicas <= 2"]})
    out = str(tmp_path / "o")
    runner.run_sweep(sp, out, chunk_size=3, slots=8, progress=False)
    df = runner.load_results(out).sort_values("config_id").reset_index(drop=True)
    assert len(df) == 6
    cfgs = sp.configs(sp.sample(np.arange(6)))
    halted = [i for i, c in enumerate(cfgs) if c["disaggregation"]["decode_replicas"] == 3]
    assert len(halted) == 2
    np.testing.assert_array_equal(df["status"][halted],
                                  st_bits.INFEASIBLE | st_bits.INF_CONSTRAINT)
    on = [i for i, c in enumerate(cfgs) if c["disaggregation"]["enabled"] and i not in halted]
    off = [i for i in range(6) if i not in on and i not in halted]
    assert (df["status"][on + off] == 0).all()
    for idx in (on, off):
        direct = api.run([cfgs[i] for i in idx])
        for k in ("ttft_p99_s", "tpot_p50_s", "e2e_mean_s", "throughput_rps", "busy_s",
                  "iterations", "completed"):
            np.testing.assert_allclose(df[k].to_numpy(np.float64)[idx], direct.metrics[k],
                                       rtol=1e-6, err_msg=k)
    gpus = objectives.derived({k: df[k].to_numpy() for k in df.columns}, "num_gpus")
    np.testing.assert_array_equal(
        gpus, [1.0 + c["disaggregation"]["decode_replicas"] if c["disaggregation"]["enabled"]
               else 1.0 for c in cfgs])
    assert np.isfinite(df["kv_transfer_mean_s"].to_numpy(np.float64)[on]).all()


def test_disagg__vllm_caveat_says_how_to_deploy_the_pools():
    from search.export import vllm_caveats

    notes = vllm_caveats({"disaggregation": {"enabled": True, "decode_replicas": 3}, "tp": 2})
    text = " ".join(notes)
    assert "run 1 prefill instance(s)" in text and "3 decode instance(s)" in text
    assert "NixlConnector" in text and "max_tokens 1" in text and "2 GPU(s) each" in text

"""The README is the front door: its code runs and its examples are valid as written.

The Quick start's Python block is executed as it stands; the YAML blocks are loaded
with the parsers users would feed them to; every ``jaxsim`` command in a bash block, and
every flag in the "Command line" summary, is parsed by the real argument parser (and,
for ``jaxsim simulate``, its ``--set`` values by the configuration loader), without
running the long ones.
"""

from __future__ import annotations

import os
import re
import shlex

import numpy as np
import pytest
import yaml

from jaxsim import cli, config
from search import space as space_mod

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _readme() -> str:
    with open(README) as f:
        return f.read()


def _blocks(lang: str) -> list[str]:
    """The fenced blocks of one language, in order (``""``: blocks with no language)."""
    return [m.group(2) for m in _FENCE.finditer(_readme()) if m.group(1) == lang]


def _section_block(heading: str) -> str:
    """The first fenced block after a ``## heading`` line."""
    text = _readme()
    return _FENCE.search(text, text.index(f"\n## {heading}\n")).group(2)


def _jaxsim_commands() -> list[list[str]]:
    """Every ``jaxsim ...`` command line of the README's bash blocks, as argv lists
    (line continuations joined, comments dropped, ``.venv/bin/jaxsim`` included)."""
    out = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.lstrip().startswith("#"):  # a comment line
                continue
            for part in re.split(r"&&|;", line.split(" #")[0]):
                # split as a shell would: an unquoted < or > (an SLO's <=) is a redirection
                lex = shlex.shlex(part, posix=True, punctuation_chars=True)
                lex.whitespace_split = True
                argv = list(lex)
                ops = [a for a in argv if a and set(a) <= set("();<>|&")]
                assert not ops, f"README: {part.strip()!r}: unquoted shell operator {ops}"
                if argv and os.path.basename(argv[0]) == "jaxsim":
                    out.append(argv[1:])
    return out


@pytest.mark.slow  # 73 s from a cold compile cache on 2 cores: CI's slow step
def test_readme__quick_start_runs_as_written():
    (code,) = _blocks("python")
    ns: dict = {}
    exec(compile(code, "README.md (Quick start)", "exec"), ns)  # noqa: S102
    one, sweep = ns["res"].lane(0), ns["sweep"]
    assert one["status"] == "ok" and one["completed"] == 1000
    assert 0 < one["ttft_p99_s"] < 10 and 0 < one["tpot_p50_s"] < 1
    assert len(ns["configs"]) == 18 and ns["sweep"].metrics["ttft_p99_s"].shape == (18,)
    assert np.all(np.isfinite(sweep.metrics["ttft_p99_s"])) and np.all(sweep.status == 0)
    assert np.all(np.asarray(sweep.metrics["completed"]) == 1000)


def test_readme__configuration_block_spells_out_the_defaults():
    (cfg_block,) = [b for b in _blocks("yaml") if b.startswith("model:")]
    raw, defaults = yaml.safe_load(cfg_block), config.validate({})
    assert config.validate(raw) == defaults

    def keys(d, prefix=""):  # every key, nested ones dotted; the block leaves none out
        return {prefix + k for k in d} | {x for k, v in d.items() if isinstance(v, dict)
                                           for x in keys(v, f"{prefix}{k}.")}

    assert keys(raw) == keys(defaults)


def test_readme__design_space_block_is_a_valid_space():
    (block,) = [b for b in _blocks("yaml") if b.startswith("base:")]
    sp = space_mod.from_dict(yaml.safe_load(block), source="README")
    assert [a.key for a in sp.axes] == ["max_num_seqs", "max_num_batched_tokens",
                                        "gpu_memory_utilization", "cost.cpu_iter_s"]
    assert sp.size == 8 * 4 * 25 * 5


def test_readme__command_summary_matches_the_parser():
    """Every subcommand and ``--flag`` of the "Command line" summary exists."""
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    block = _section_block("Command line")
    assert block.lstrip().startswith("jaxsim simulate"), "the usage summary comes first"
    lines = [ln.split("#")[0] for ln in block.splitlines()]
    seen = set()
    for ln in filter(str.strip, lines):
        words = ln.split()
        assert words[0] == "jaxsim" and words[1] in subs, ln
        known = {o for a in subs[words[1]]._actions for o in a.option_strings}
        for flag in re.findall(r"--[a-z][a-z-]*", ln):
            assert flag in known, f"jaxsim {words[1]}: README lists {flag}; parser has {known}"
        seen.add(words[1])
    assert seen == set(subs), f"README's summary lacks {set(subs) - seen}"


def test_readme__every_jaxsim_command_parses_and_its_configuration_is_valid():
    cmds = _jaxsim_commands()
    assert {c[0] for c in cmds} >= {"demo", "simulate", "profile", "calibrate", "sweep",
                                    "best", "pareto"}
    parser = cli.build_parser()
    for argv in cmds:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse reports on stderr and exits
            pytest.fail(f"README: jaxsim {' '.join(argv)}: not accepted ({e})")
        if args.command == "simulate":
            sets = [s for s in args.set or [] if not s.startswith("cost_preset=")]
            cfg = config.load(args.config, sets)  # raises ConfigError naming the field
            config.build_trace(cfg)


def test_readme__preset_error_table_matches_the_shipped_presets():
    """The held-out MAPE / p90 the README quotes for the shipped presets are the ones
    in their ``report`` (with shape tables) and ``report_roofline`` (roofline alone)."""
    import json

    from jaxsim import costpresets

    rows = {"GEMMs (QKV, O, MLP up/down), with shape tables": ("report", "gemm"),
            "GEMMs, roofline alone": ("report_roofline", "gemm"),
            "norms and elementwise, with shape tables": ("report", "elementwise"),
            "norms and elementwise, roofline alone": ("report_roofline", "elementwise"),
            "all-reduce (single node), with tables over message size": ("report",
                                                                        "all_reduce"),
            "all-reduce, roofline alone": ("report_roofline", "all_reduce")}
    gpus = ("H100-SXM", "A100-80GB", "A40")
    presets = {}
    for g in gpus:
        with open(costpresets.resolve("auto", g)) as f:
            presets[g] = json.load(f)
    text = _readme()
    for label, (report, fam) in rows.items():
        cells = [c.strip() for c in re.search(rf"^\| {re.escape(label)} \|(.*)\|$", text,
                                              re.M).group(1).split("|")]
        for g, cell in zip(gpus, cells, strict=True):
            r = presets[g][report].get(fam)
            want = "no data" if r is None else f"{r['mape']:.1f} / {r['p90_ape']:.1f}"
            assert cell == want, f"README {label!r}, {g}: {cell!r}; preset has {want!r}"

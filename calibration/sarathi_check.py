"""Cross-check of the A100 preset against Sarathi-Serve's measured prefill iterations.

    python -m calibration.sarathi_check [FOLDER]   # default: the subset in calibration/data

Sarathi-Serve (OSDI'24) timed prefill-only iterations of Yi-34B at TP 2 on two
A100-80GB PCIe GPUs (``measurements/sarathi_serve_osdi24``). Nothing is fitted to them:
each row is predicted by the cost model's iteration time with the shipped A100-80GB
preset (its kernel values and shape tables; the GPU figures of the A100-80GB SXM
preset), and, for comparison, with the all-reduce over PCIe (32 GB/s) instead, and
with the preset's Splitwise engine fit at TP 2 laid over it (``cost_engine_fit``).
Prints the error of every row and the MAPE of each variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

PCIE_LINK_BYTES_PER_S = 32e9


def run(folder: str) -> dict[str, np.ndarray]:
    from calibration import fit as F
    from calibration import loaders
    from jaxsim import costpresets
    from jaxsim.params import CostParams

    m = loaders.load([folder])
    _, hw = F.hardware_params("A100-80GB")
    pcie = dataclasses.replace(hw, link_bw_bytes_per_s=hw.link_bw_bytes_per_s * 0
                               + PCIE_LINK_BYTES_PER_S)
    tables = costpresets.tables("auto", "A100-80GB")
    kern = costpresets.values("auto", "A100-80GB")
    engine = {**kern, **costpresets.engine_values("auto", "A100-80GB", 2)}
    rows = F.prepare_rows(m, tables)
    # as cost_engine_fit: the engine's all-reduce table replaces the kernel one
    engine_rows = F.prepare_rows(m, {**tables, **costpresets.engine_tables("auto", "A100-80GB")})
    t = np.asarray(m["time_s"], np.float64)
    out = {"tokens": np.asarray(m["num_tokens"]), "measured_s": t}
    for name, vals, h, r in (("A100 preset", kern, hw, rows),
                             ("A100 preset, all-reduce over PCIe", kern, pcie, rows),
                             ("A100 preset + Splitwise engine fit (TP 2)", engine, hw,
                              engine_rows)):
        out[name] = np.asarray(F.predict(CostParams.from_values(vals), h, r), np.float64)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m calibration.sarathi_check",
        description="The A100 preset against Sarathi-Serve's measured prefill iterations.")
    ap.add_argument("folder", nargs="?",
                    default=os.path.join(os.path.dirname(__file__), "data", "sarathi"),
                    help="a folder of Sarathi-Serve measurements (default: the subset in "
                         "calibration/data/sarathi)")
    folder = ap.parse_args(argv).folder
    if not os.path.isdir(folder):
        ap.error(f"folder: {folder!r} is not a folder")
    r = run(folder)
    t = r["measured_s"]
    names = [k for k in r if k not in ("tokens", "measured_s")]
    print(f"{'tokens':>7}{'measured':>11}" + "".join(f"{n[:22]:>24}" for n in names))
    for i in range(len(t)):
        print(f"{int(r['tokens'][i]):>7}{t[i] * 1e3:>9.1f}ms" +
              "".join(f"{r[n][i] * 1e3:>14.1f}ms ({(r[n][i] / t[i] - 1) * 100:+4.0f}%)"
                      for n in names))
    for n in names:
        e = np.abs(r[n] / t - 1) * 100
        print(f"{n}: MAPE {e.mean():.1f}%, median {np.median(e):.1f}%, max {e.max():.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The 100k-configuration sweep bar: run examples/sweep_100k.yaml, kill -9 it mid-run,
# resume it, and check the Parquet output (exactly 100,000 rows, no duplicate ids).
#   bash benchmarks/sweep_100k.sh [OUT_DIR] [KILL_AFTER_CHUNKS]
# Writes benchmarks/results/sweep_100k_<backend>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/jaxsim_sweep_100k}
KILL_AFTER=${2:-10}
PY=${PYTHON:-python}
rm -rf "$OUT"
start=$(date +%s)
$PY -m jaxsim sweep examples/sweep_100k.yaml --out "$OUT" > "$OUT.log1" 2>&1 &
pid=$!
while [ "$(ls "$OUT" 2>/dev/null | grep -c '^chunk-' || true)" -lt "$KILL_AFTER" ]; do
  sleep 2
  kill -0 $pid 2>/dev/null || { echo "sweep exited early"; cat "$OUT.log1"; exit 1; }
done
sleep 5   # let it get well into the next chunk
kill -9 $pid
wait $pid 2>/dev/null || true
killed=$(date +%s)
before=$(ls "$OUT" | grep -c '^chunk-')
echo "killed after $before finished chunks ($((killed - start)) s)"
$PY -m jaxsim sweep examples/sweep_100k.yaml --out "$OUT" --resume > "$OUT.log2" 2>&1
end=$(date +%s)
tail -1 "$OUT.log2"
$PY - "$OUT" "$before" "$start" "$killed" "$end" <<'PY'
import json, sys, datetime
import numpy as np
from jaxsim.bench import machine
from search import runner
out, before, start, killed, end = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
df = runner.load_results(out)
ids = df["config_id"].to_numpy()
plan = json.load(open(f"{out}/sweep.json"))
rec = {
    "rows": int(len(df)), "unique_ids": int(len(np.unique(ids))),
    "ids_are_0_to_n": bool(np.array_equal(np.sort(ids), np.arange(plan["size"]))),
    "ok_lanes": int((df["status"] == 0).sum()),
    "chunk_size": plan["chunk_size"], "num_chunks": plan["num_chunks"],
    "chunks_before_kill": before, "wall_s_before_kill": killed - start,
    "wall_s_after_resume": end - killed, "wall_s_total": end - start,
    "configs_per_s": len(df) / (end - start),
    "config_requests_per_s": len(df) * 1000 / (end - start),
    "machine": machine(), "command": "bash benchmarks/sweep_100k.sh",
    "date": datetime.date.today().isoformat(),
}
print(json.dumps(rec, indent=1))
path = f"benchmarks/results/sweep_100k_{rec['machine']['backend']}.json"
json.dump(rec, open(path, "w"), indent=1)
assert rec["rows"] == 100000 and rec["unique_ids"] == 100000 and rec["ids_are_0_to_n"], rec
PY

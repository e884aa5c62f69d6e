#!/usr/bin/env bash
# Benchmark: keyturn's audit log (chained, fdatasync'ed, group commit) beside the anchor, a
# plain append + fdatasync per event with no chain (what Vault's file audit device does); and
# `keyturn audit verify` throughput.
#
# Usage: dev/bench-audit.sh [RUNS]        (default 5; each figure is the median)
# Env:   KEYTURN_BENCH_DIR  where to write (default target/bench-audit). It must be a real disk:
#                           on tmpfs an fsync costs nothing and both figures mean little.
#        BENCH_EVENTS, BENCH_CALLERS, BENCH_ANCHOR_EVENTS, BENCH_VERIFY_EVENTS  sizes
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-5}"
dir="${KEYTURN_BENCH_DIR:-target/bench-audit}"
mkdir -p "$dir"

cargo build --release --locked -p keyturn-agent --example bench_audit >&2

fs_type="$(stat -f -c %T "$dir" 2>/dev/null || echo unknown)"
cpu="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
echo "machine: ${cpu:-unknown CPU}, $(nproc) cores, $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "bench dir: $dir ($fs_type)"
if [ "$fs_type" = tmpfs ] || [ "$fs_type" = ramfs ]; then
    echo "warning: $dir is memory-backed; fsync is free there, so the figures are not comparable" >&2
fi
echo "reproduce: dev/bench-audit.sh $runs"
echo

exec target/release/examples/bench_audit \
    --dir "$dir" \
    --runs "$runs" \
    --events "${BENCH_EVENTS:-200000}" \
    --callers "${BENCH_CALLERS:-512}" \
    --anchor-events "${BENCH_ANCHOR_EVENTS:-3000}" \
    --verify-events "${BENCH_VERIFY_EVENTS:-1000000}"

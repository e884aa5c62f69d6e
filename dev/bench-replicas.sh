#!/usr/bin/env bash
# Benchmark: 100,000 generated policies shared by 4 `keyturn run` replicas through membership
# Leases on the Kubernetes API stand-in, on OpenBao: RSS per replica, time until every policy
# is owned, rebalance after kill -9, fire delay, store requests per rotation; and RSS of one
# replica over all and over a share, per loaded vs per owned policy.
# Usage: dev/bench-replicas.sh [POLICIES [REPLICAS]]   (default 100000 4)
# BENCH_STATIC=1 runs the image's static keyturn (dev/build-static.sh) instead of the release
# build's: the binary a cluster runs, and the one the memory target is measured on.
set -euo pipefail
cd "$(dirname "$0")/.."
./dev/setup.sh >/dev/null
cargo build --release --locked -p keyturn-agent -p keyturn-kube-standin --bin keyturn --bin keyturn-kube-standin >&2
if [ "${BENCH_STATIC:-}" = 1 ]; then
  BENCH_KEYTURN=$(./dev/build-static.sh)/keyturn
  export BENCH_KEYTURN
fi
exec .venv/bin/python dev/bench/replicas_bench.py "$@"

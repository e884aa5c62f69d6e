#!/usr/bin/env bash
# Benchmark: `keyturn run` with 10,000 generated policies on OpenBao — burst rotation rate,
# RSS, idle CPU, fire delay. Usage: dev/bench-daemon.sh [POLICIES]
set -euo pipefail
cd "$(dirname "$0")/.."
./dev/setup.sh >/dev/null
cargo build --release --locked -p keyturn-agent >&2
exec .venv/bin/python dev/bench/daemon_bench.py "$@"

#!/usr/bin/env bash
# Benchmark: keyturn-init vs `bao agent`, 50 KV v2 secrets via AppRole into tmpfs.
# Usage: dev/bench-init.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
./dev/setup.sh >/dev/null
cargo build --release --locked -p keyturn-init >&2
exec .venv/bin/python dev/bench/init_bench.py "$@"

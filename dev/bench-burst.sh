#!/usr/bin/env bash
# Benchmark: an init burst like a node drain. 100 keyturn-init processes at once against 100
# `bao agent` processes at once, each rendering 5 KV v2 secrets (AppRole) into its own tmpfs dir.
# Usage: dev/bench-burst.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
./dev/setup.sh >/dev/null
cargo build --release --locked -p keyturn-init >&2
# 100 children, their stderr files and gate pipes, and the server's 100+ connections: lift the
# open-file limit to the hard limit.
ulimit -n "$(ulimit -Hn)"
exec .venv/bin/python dev/bench/burst_bench.py "$@"

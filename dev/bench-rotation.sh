#!/usr/bin/env bash
# Benchmark: rotation throughput, 100 PostgreSQL users, one policy each, all due at once —
# keyturn's full rotation (ALTER ROLE, verify login, promote in Vault, patch Secret, annotate
# Deployment) beside OpenBao's own database/rotate-role on the same users and server.
# Usage: dev/bench-rotation.sh [REPETITIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
./dev/setup.sh >/dev/null
cargo build --release --locked -p keyturn-agent -p keyturn-kube-standin --bin keyturn --bin keyturn-kube-standin >&2
exec .venv/bin/python dev/bench/rotation_bench.py "$@"

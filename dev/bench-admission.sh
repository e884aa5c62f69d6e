#!/usr/bin/env bash
# Benchmark: admission latency. N pod creates through the Kubernetes API stand-in with
# `keyturn webhook` configured (HTTPS, its MutatingWebhookConfiguration), against the same
# creates with no webhook configured; plus the webhook's own duration histogram.
# Usage: dev/bench-admission.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
./dev/setup.sh >/dev/null
cargo build --release --locked -p keyturn-agent -p keyturn-kube-standin --bin keyturn --bin keyturn-kube-standin >&2
exec .venv/bin/python dev/bench/admission_bench.py "$@"

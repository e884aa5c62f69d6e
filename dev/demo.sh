#!/usr/bin/env bash
# The main job, end to end, on this machine: real OpenBao, PostgreSQL and a Kubernetes API stand-in on
# loopback; keyturn-init renders a pod's secrets into tmpfs; keyturn rotates a PostgreSQL password,
# delivers it to a Kubernetes Secret and rolls the Deployment;
# the audit trail is shown, verified, and caught being tampered with.
set -euo pipefail
cd "$(dirname "$0")/.."
./dev/setup.sh
cargo build --locked -q -p keyturn-agent -p keyturn-init -p keyturn-tests --bin keyturn --bin keyturn-init --bin keyturn-demo
KEYTURN_BIN="$PWD/target/debug/keyturn" KEYTURN_INIT_BIN="$PWD/target/debug/keyturn-init" \
  exec ./target/debug/keyturn-demo

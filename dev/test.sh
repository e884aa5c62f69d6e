#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: installs what is missing, then format check,
# clippy with warnings denied, and every test (unit and end-to-end against real servers).
set -euo pipefail
cd "$(dirname "$0")/.."
./dev/setup.sh
echo "[test] cargo fmt --check" >&2
cargo fmt --all -- --check
echo "[test] cargo clippy -D warnings" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
# The static release binaries the FROM-scratch images ship, built once here (one cargo call,
# its own target dir: dev/build-static.sh): tests/tests/ship/images.rs runs them in an empty
# chroot and builds the images from them, and its own identical cargo call is then a no-op
# instead of a many-minute release build under nextest's per-test timeout.
echo "[test] static release binaries (dev/build-static.sh)" >&2
./dev/build-static.sh >/dev/null
echo "[test] cargo nextest run" >&2
cargo nextest run --workspace --locked --profile "${KEYTURN_NEXTEST_PROFILE:-default}" "$@"
echo "[test] fuzz smoke run (dev/fuzz.sh)" >&2
KEYTURN_FUZZ_DEV=1 ./dev/fuzz.sh 15

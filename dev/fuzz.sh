#!/usr/bin/env bash
# Coverage-guided fuzzing of keyturn's parsers (fuzz/, cargo fuzz on the nightly toolchain):
# builds every target once, then runs each for a bounded time. Exits non-zero if any target
# crashes (a panic, an overflow, a timeout or running out of memory); the input is saved under
# fuzz/artifacts/TARGET/ and `cargo +nightly fuzz run TARGET FILE` replays it.
#
#   ./dev/fuzz.sh [SECONDS]    # per target, default 20
#
# Inputs that reach new coverage go to a scratch directory, so a run leaves the committed
# seed corpora (fuzz/corpus/TARGET/) as they are; to keep a find, `cargo fuzz cmin` it into
# the seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
targets=(policy manifest annotations template audit)

if ! command -v cargo-fuzz >/dev/null || ! rustup toolchain list | grep -q '^nightly'; then
  echo "[fuzz] cargo-fuzz or the nightly toolchain is missing: run dev/setup.sh" >&2
  exit 64
fi

# No sanitizer: keyturn forbids unsafe code, so AddressSanitizer would watch only the
# dependencies' unsafe code, at the price of building the whole agent (AWS SDK, kube, tokio)
# instrumented. What the fuzzing looks for here is panics, overflows (debug assertions are on),
# hangs and runaway memory, which need no sanitizer.
flags=(--sanitizer none --debug-assertions)
# KEYTURN_FUZZ_DEV=1 builds without optimisation: about 3.5 minutes instead of about 18 for
# the optimised build here, at about a twentieth of the executions per second. CI uses it as a
# smoke run over the seeds and their near neighbours; a real campaign runs the optimised build
# for minutes per target (`./dev/fuzz.sh 300`).
if [ "${KEYTURN_FUZZ_DEV:-0}" = 1 ]; then
  flags+=(--dev)
fi

start=$SECONDS
echo "[fuzz] cargo fuzz build" >&2
(cd fuzz && cargo +nightly fuzz build "${flags[@]}")
echo "[fuzz] built in $((SECONDS - start)) s" >&2

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  echo "[fuzz] $t for ${secs}s" >&2
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  if ! (cd fuzz && cargo +nightly fuzz run "${flags[@]}" "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=1100000 \
      -print_final_stats=1 -artifact_prefix="artifacts/$t/"); then
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "[fuzz] crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "[fuzz] ok: ${targets[*]}" >&2

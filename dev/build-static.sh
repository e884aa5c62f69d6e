#!/usr/bin/env bash
# Builds `keyturn` and `keyturn-init` as fully static binaries, the ones the FROM-scratch
# images ship (images/*.Containerfile, dev/images.sh), checks with file and ldd that they
# are static, and prints where they are.
#
# - glibc linked statically (`+crt-static`: a static-pie binary needing no loader and no
#   libc in the image); musl is not used because it cannot be installed here.
# - `--target x86_64-unknown-linux-gnu` given explicitly: RUSTFLAGS then apply to the
#   target only, so build scripts and proc-macros (built for the host) stay dynamic.
# - Profile `image` (Cargo.toml: release plus fat LTO, one codegen unit, opt-level "s":
#   binaries a third smaller, measured there), one cargo call for both binaries:
#   tests/src/bins.rs (`static_bins`) runs the very same command, so after this script the
#   suite's build is a no-op (a second call building one binary alone could unify features
#   differently and rebuild).
# - Its own target directory, static/ inside the main one (target/static, or
#   $CARGO_TARGET_DIR/static; KEYTURN_STATIC_TARGET_DIR overrides), which is where the tests
#   look: the different RUSTFLAGS would otherwise rebuild everything in the main target
#   directory at each switch, and a build here does not hold the main directory's lock that
#   everyone else's `cargo build`/`cargo test` waits on.
#
# Usage: dev/build-static.sh        (prints the directory holding both binaries, last line)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[build-static]\033[0m %s\n' "$*" >&2; }

target=x86_64-unknown-linux-gnu
target_dir=${KEYTURN_STATIC_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/static}
out=$target_dir/$target/image

say "cargo build --profile image --target $target (RUSTFLAGS=-C target-feature=+crt-static) into $target_dir"
start=$(date +%s)
# CARGO_ENCODED_RUSTFLAGS would win over RUSTFLAGS.
env -u CARGO_ENCODED_RUSTFLAGS RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --profile image --locked --target "$target" --target-dir "$target_dir" \
  -p keyturn-agent --bin keyturn -p keyturn-init --bin keyturn-init
say "built in $(( $(date +%s) - start ))s"

for bin in keyturn keyturn-init; do
  f=$out/$bin
  desc=$(file -b "$f")
  case "$desc" in
    *"static-pie linked"* | *"statically linked"*) ;;
    *) echo "build-static: $f is not static: $desc" >&2; exit 1 ;;
  esac
  # ldd says "statically linked" (static-pie) or "not a dynamic executable" (static), and
  # exits non-zero for the latter.
  deps=$(ldd "$f" 2>&1 || true)
  case "$deps" in
    *"statically linked"* | *"not a dynamic executable"*) ;;
    *) echo "build-static: ldd $f lists libraries:" >&2; echo "$deps" >&2; exit 1 ;;
  esac
  say "$bin: $(stat -c %s "$f") bytes, $desc"
done
echo "$out"

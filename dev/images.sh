#!/usr/bin/env bash
# Builds keyturn's two FROM-scratch images with podman, from the static binaries of
# dev/build-static.sh, after linting their Containerfiles with hadolint; prints each binary's
# and image's size.
#
#   images/keyturn.Containerfile       -> localhost/keyturn:VERSION
#   images/keyturn-init.Containerfile  -> localhost/keyturn-init:VERSION
#
# VERSION is the workspace's (Cargo.toml); KEYTURN_IMAGE_TAG overrides the tag. Push them
# with `podman push localhost/keyturn:VERSION REGISTRY/keyturn:VERSION`. Each build context
# is a temporary directory holding the one binary. Building needs no container to run.
# KEYTURN_PODMAN adds podman options, e.g. KEYTURN_PODMAN="--storage-driver vfs" where
# overlay storage is not available.
#
# Usage: dev/images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[images]\033[0m %s\n' "$*" >&2; }

hadolint=.keyturn/bin/hadolint
[ -x "$hadolint" ] || hadolint=$(command -v hadolint) || { echo "images: hadolint not found: run dev/setup.sh" >&2; exit 1; }
command -v podman >/dev/null || { echo "images: podman not found: run dev/setup.sh" >&2; exit 1; }
# shellcheck disable=SC2206 # word splitting of the options is wanted
podman=(podman ${KEYTURN_PODMAN:-})

say "hadolint images/*.Containerfile"
"$hadolint" images/keyturn.Containerfile images/keyturn-init.Containerfile

bindir=$(./dev/build-static.sh | tail -1)

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
tag=${KEYTURN_IMAGE_TAG:-$version}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rows=()
for bin in keyturn-init keyturn; do
  ref=localhost/$bin:$tag
  mkdir "$work/$bin"
  cp "$bindir/$bin" "$work/$bin/$bin"
  say "podman build $ref"
  # --layers=false: no cached intermediate images left behind (there is nothing to cache).
  "${podman[@]}" build --quiet --layers=false \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    -f "images/$bin.Containerfile" -t "$ref" "$work/$bin" >/dev/null
  size=$("${podman[@]}" image inspect --format '{{.Size}}' "$ref")
  # What a registry stores and a node pulls: the gzip-compressed layer, as `podman save`
  # writes it into an OCI layout.
  "${podman[@]}" save --quiet --format oci-dir -o "$work/oci-$bin" "$ref"
  compressed=$(python3 - "$work/oci-$bin" <<'EOF'
import json, os, sys
d = sys.argv[1]
blob = lambda digest: os.path.join(d, "blobs", "sha256", digest.split(":", 1)[1])
index = json.load(open(os.path.join(d, "index.json")))
manifest = json.load(open(blob(index["manifests"][0]["digest"])))
print(sum(l["size"] for l in manifest["layers"]))
EOF
)
  rows+=("$(printf '%-14s %12s %12s %12s  %s' "$bin" "$(stat -c %s "$bindir/$bin")" "$size" "$compressed" "$ref")")
done

printf '%-14s %12s %12s %12s  %s\n' binary "binary B" "image B" "gzip B" image
printf '%s\n' "${rows[@]}"

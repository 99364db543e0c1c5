#!/usr/bin/env bash
# Builds the example plugins (plugins/examples/*) into WebAssembly components,
# each checked against the world of wit/plugin.wit its Cargo.toml names
# ([package.metadata.causeway] world = "...").
#
#   scripts/build-plugins.sh                  # every example
#   scripts/build-plugins.sh pii-mask validate  # some
#   scripts/build-plugins.sh --print-out-dir  # where components go; builds nothing
#   scripts/build-plugins.sh --test           # native unit tests and clippy instead
#
# Components land in $OUT/components/<name>.wasm, where OUT is
# $CARGO_TARGET_DIR/plugins when CARGO_TARGET_DIR is set (so CI keeps plugin builds
# between runs, apart from the gateway's) and plugins/target otherwise.
# Idempotent and incremental: cargo rebuilds what changed, and a component is
# only re-made when its module, the WIT or the componentize tool is newer.
#
# How wasm is built, first match wins (CAUSEWAY_PLUGIN_ROUTE forces one):
#   unknown  rustup's wasm32-unknown-unknown target, if installed.
#   debian   Debian's rustc-web (/usr/bin/rustc, which has the wasm32 targets) with
#            -Zbuild-std and wasm-ld-16: what scripts/setup.sh installs, for machines
#            where rustup cannot download wasm targets.
#   wasip2   rustup's wasm32-wasip2 target. Its components import WASI interfaces
#            (Rust's std needs them), which the gateway does not provide: a warning
#            says so. Prefer `rustup target add wasm32-unknown-unknown`.
# The first two make a core module that plugins/componentize turns into a component
# importing nothing but causeway:plugin/host.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
plugins="$root/plugins"

log() { printf '[build-plugins] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  case "$CARGO_TARGET_DIR" in /*) base="$CARGO_TARGET_DIR" ;; *) base="$PWD/$CARGO_TARGET_DIR" ;; esac
  out="$base/plugins"
else
  out="$plugins/target"
fi
components="$out/components"

if [ "${1:-}" = "--print-out-dir" ]; then
  echo "$components"
  exit 0
fi

# The SDK's and the examples' own tests: native, plain cargo, no wasm tooling.
if [ "${1:-}" = "--test" ]; then
  export CARGO_TARGET_DIR="$out"
  log "native tests of plugins/ (target dir $out)"
  cargo test --locked --manifest-path "$plugins/Cargo.toml" --workspace
  cargo clippy --locked --manifest-path "$plugins/Cargo.toml" --workspace --all-targets -- -D warnings
  exit 0
fi

# Which examples: the arguments, or all of them.
if [ "$#" -gt 0 ]; then
  names=("$@")
else
  names=()
  for manifest in "$plugins"/examples/*/Cargo.toml; do
    names+=("$(basename "$(dirname "$manifest")")")
  done
fi

# Choose the route.
installed=$(rustup target list --installed 2>/dev/null || true)
has_rustup_target() { grep -qx "$1" <<<"$installed"; }
debian_ready() {
  [ -x /usr/bin/rustc ] && command -v wasm-ld-16 >/dev/null 2>&1 &&
    [ -d "$(/usr/bin/rustc --print sysroot 2>/dev/null)/lib/rustlib/src/rust/library/std" ] &&
    /usr/bin/rustc --print target-list 2>/dev/null | grep -qx wasm32-unknown-unknown
}
route=${CAUSEWAY_PLUGIN_ROUTE:-}
if [ -z "$route" ]; then
  if has_rustup_target wasm32-unknown-unknown; then
    route=unknown
  elif debian_ready; then
    route=debian
  elif has_rustup_target wasm32-wasip2; then
    route=wasip2
  else
    die "no way to build wasm here: run scripts/setup.sh (installs Debian's rustc-web rust-web-src lld-16 wasi-libc), or rustup target add wasm32-unknown-unknown"
  fi
fi

# Each plugin is built on its own (-p NAME): a build of several at once would
# unify the SDK's world features and give every component the others' types.
cargo_env=(env CARGO_TARGET_DIR="$out")
cargo_flags=(build --release --locked --manifest-path "$plugins/Cargo.toml")
allow_wasi=()
case "$route" in
  unknown)
    target=wasm32-unknown-unknown
    ;;
  debian)
    debian_ready || die "the debian route needs /usr/bin/rustc with wasm32 targets, its library sources and wasm-ld-16: run scripts/setup.sh"
    target=wasm32-unknown-unknown
    # rustup's cargo drives Debian's rustc; -Z flags need RUSTC_BOOTSTRAP as the
    # toolchain is a stable one. Host-side crates (proc macros) use it too.
    cargo_env+=(RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-16)
    cargo_flags+=(-Zbuild-std=std,panic_abort)
    ;;
  wasip2)
    target=wasm32-wasip2
    allow_wasi=(--allow-wasi)
    log "warning: wasm32-wasip2 components import WASI interfaces, which the gateway does not provide; rustup target add wasm32-unknown-unknown builds WASI-free ones"
    ;;
  *) die "CAUSEWAY_PLUGIN_ROUTE must be unknown, debian or wasip2, not '$route'" ;;
esac
# Code generation for the sandbox: 128-bit SIMD (byte searches such as memchr
# take 16 bytes a step, and branch-free loops become vector code), and no
# bulk-memory instructions: the plugin host runs memory.copy as a call out of
# the sandbox, so small copies cost less as plain wasm. Measured with
# benches/plugin-cost (pii-mask about 30% faster). CAUSEWAY_PLUGIN_RUSTFLAGS
# replaces them.
wasm_flags=${CAUSEWAY_PLUGIN_RUSTFLAGS-"-C target-cpu=mvp -C target-feature=+simd128,+mutable-globals,+sign-ext,+nontrapping-fptoint"}
target_var=$(printf 'CARGO_TARGET_%s_RUSTFLAGS' "$target" | tr 'a-z-' 'A-Z_')
cargo_env+=("$target_var=$wasm_flags")
log "route: $route ($target), output in $out"

# The componentize tool: a host binary, always with the normal toolchain.
tool_dir="$out/componentize"
log "building the componentize tool"
env -u RUSTC -u RUSTC_BOOTSTRAP CARGO_TARGET_DIR="$tool_dir" \
  cargo build --release --locked --quiet --manifest-path "$plugins/componentize/Cargo.toml"
tool="$tool_dir/release/causeway-componentize"

mkdir -p "$components"
built=()
for name in "${names[@]}"; do
  manifest="$plugins/examples/$name/Cargo.toml"
  [ -f "$manifest" ] || die "no plugin '$name' (no $manifest)"
  world=$(sed -n '/^\[package\.metadata\.causeway\]/,/^\[/s/^world *= *"\([^"]*\)".*/\1/p' "$manifest")
  [ -n "$world" ] || die "$manifest has no [package.metadata.causeway] world = \"...\""
  package=$(sed -n 's/^name *= *"\([^"]*\)".*/\1/p' "$manifest" | head -1)

  log "building $package ($world)"
  "${cargo_env[@]}" cargo "${cargo_flags[@]}" --target "$target" -p "$package"
  module="$out/$target/release/${package//-/_}.wasm"
  [ -f "$module" ] || die "cargo built no $module"

  component="$components/$name.wasm"
  if [ -f "$component" ] && [ "$component" -nt "$module" ] && [ "$component" -nt "$tool" ] &&
     [ "$component" -nt "$root/wit/plugin.wit" ]; then
    log "$name.wasm is up to date"
  else
    "$tool" --wit "$root/wit" --world "$world" "${allow_wasi[@]}" "$module" -o "$component" >&2
  fi
  built+=("$component")
done

log "components:"
for component in "${built[@]}"; do
  printf '%8d  %s\n' "$(wc -c <"$component")" "$component"
done

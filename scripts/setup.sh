#!/usr/bin/env bash
# For a BUILD machine: takes a fresh Debian 12 / Ubuntu 22.04+ machine (as root) to a built
# `droptrace` and its demo. The host that has the incident needs none of this: copy it the
# static binary (`cargo xtask dist` → target/dist/droptrace) and run that.
#
# What it installs, and nothing else:
#   - the apt packages that building droptrace and running its demo need: compilers, the
#     netfilter and iproute2 tools droptrace reads, busybox (the demo's server and client).
#     None of them starts a service or touches the firewall: no container engine, no firewall
#     manager, no dbus, no Prometheus, no QEMU (scripts/test.sh installs those, for tests);
#   - the pinned Rust toolchain (rust-toolchain.toml) with rust-src, rustfmt and clippy;
#   - bpf-linker linked against rustc's own libLLVM (an LLVM at least as new as rustc's);
#   - a release build (the eBPF object is built by tracer/build.rs), installed as
#     /usr/local/bin/droptrace with its shell completions and man pages.
# Every step says what failed and what to do; nothing here is silent.
#
# Usage: scripts/setup.sh            (everything above)
#        SKIP_APT=1 scripts/setup.sh (toolchain and build only)
set -euo pipefail

cd "$(dirname "$0")/.."

TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
BPF_LINKER_VERSION=0.13.0

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

say "build machine setup: installs build tools and the demo's netfilter tools, starts no service"
[ "$(id -u)" -eq 0 ] || die "run as root: apt-get and the eBPF build need it (sudo $0)"

APT_PACKAGES=(
  # droptrace reads these tools' output (state snapshots, rule counters); the demo's lab uses
  # them inside its own network namespaces only
  iptables nftables conntrack iproute2 procps kmod util-linux
  # the demo's server and client in the lab's namespaces
  busybox-static curl
  # build: C toolchain for -sys crates, git for cargo
  build-essential pkg-config git ca-certificates
)

if [ "${SKIP_APT:-0}" != 1 ]; then
  command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian 12 / Ubuntu 22.04+; install the equivalents of: ${APT_PACKAGES[*]}"
  say "apt-get install ${APT_PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: check the machine's package sources"
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null \
    || die "apt-get install failed for: ${APT_PACKAGES[*]}"
fi

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v rustup >/dev/null || die "rustup not found: install it (https://rustup.rs) and re-run"
say "rust toolchain $TOOLCHAIN (+rust-src, rustfmt, clippy, the x86_64 musl target)"
rustup toolchain install "$TOOLCHAIN" --profile minimal -c rust-src -c rustfmt -c clippy \
  -t x86_64-unknown-linux-musl >/dev/null \
  || die "rustup could not install $TOOLCHAIN: the eBPF crates (aya-ebpf 0.3) need Rust >= 1.98"

# bpf-linker must use an LLVM at least as new as rustc's. Debian's system LLVM is older, so link
# bpf-linker against the libLLVM that ships inside the pinned toolchain itself.
sysroot=$(rustc "+$TOOLCHAIN" --print sysroot)
# The toolchain ships libLLVM as an ELF library with a versioned name (libLLVM.so.<ver>-rust-*)
# plus a linker script; bpf-linker's build wants a plain libLLVM.so, so give it one.
libllvm=$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM.so.*' | head -n 1)
[ -n "$libllvm" ] || die "no libLLVM.so.* in $sysroot/lib: the toolchain $TOOLCHAIN is incomplete; rustup toolchain uninstall $TOOLCHAIN and re-run"
# bpf-linker keeps this directory as its rpath: it must outlive the work tree's target/.
llvm_prefix=${CARGO_HOME:-$HOME/.cargo}/droptrace-llvm/$TOOLCHAIN
mkdir -p "$llvm_prefix/lib"
ln -sf "$libllvm" "$llvm_prefix/lib/libLLVM.so"
ln -sf "$libllvm" "$llvm_prefix/lib/$(basename "$libllvm")"

have_linker=$(bpf-linker --version 2>/dev/null || true)
if [ "$have_linker" != "bpf-linker $BPF_LINKER_VERSION" ]; then
  say "bpf-linker $BPF_LINKER_VERSION against $(basename "$libllvm") (about a minute)"
  LLVM_PREFIX="$llvm_prefix" \
    cargo "+$TOOLCHAIN" install "bpf-linker@$BPF_LINKER_VERSION" --locked --force >/dev/null 2>"$llvm_prefix/bpf-linker-install.log" \
    || die "building bpf-linker failed (log: $llvm_prefix/bpf-linker-install.log)"
fi
bpf-linker --version >/dev/null 2>&1 || die "bpf-linker does not run: see $llvm_prefix/bpf-linker-install.log"

say "cargo build --release (the eBPF object is built by tracer/build.rs)"
cargo build --release --locked -p tracer || die "build failed: see the compiler output above"
say "built: $(pwd)/target/release/droptrace"
say "installing droptrace: /usr/local/bin, bash/zsh/fish completions, man pages (man droptrace)"
install -m 0755 target/release/droptrace /usr/local/bin/droptrace \
  || die "cannot install /usr/local/bin/droptrace: is /usr/local writable?"
for completion in bash:/usr/share/bash-completion/completions/droptrace \
  zsh:/usr/share/zsh/vendor-completions/_droptrace \
  fish:/usr/share/fish/vendor_completions.d/droptrace.fish; do
  shell=${completion%%:*} file=${completion#*:}
  mkdir -p "$(dirname "$file")" && target/release/droptrace completions "$shell" >"$file" \
    || die "cannot write the $shell completion to $file"
done
target/release/droptrace manpages /usr/local/share/man/man1 >/dev/null \
  || die "cannot write the man pages to /usr/local/share/man/man1"
say "done. For the host that has the incident, build the static binary: cargo xtask dist (→ target/dist/droptrace)"

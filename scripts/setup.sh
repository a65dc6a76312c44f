#!/usr/bin/env bash
# Takes a fresh Debian 12 / Ubuntu 22.04+ machine (as root) to a built `droptrace` binary:
#   - the apt packages droptrace and its integration tests use,
#   - the pinned Rust toolchain (rust-toolchain.toml) with rust-src, rustfmt and clippy,
#   - bpf-linker linked against rustc's own libLLVM (an LLVM at least as new as rustc's),
#   - a release build of the workspace (the eBPF object is built by tracer/build.rs),
#   - the static binary target/dist/droptrace (x86_64 musl) that runs on any x86_64 Linux.
# Every step says what failed and what to do; nothing here is silent.
#
# Usage: scripts/setup.sh            (everything)
#        SKIP_APT=1 scripts/setup.sh (toolchain and build only)
set -euo pipefail

cd "$(dirname "$0")/.."

TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
BPF_LINKER_VERSION=0.13.0

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: apt-get and the eBPF build/tests need it (sudo $0)"

APT_PACKAGES=(
  # droptrace reads these tools' output (state snapshots, rule counters)
  iptables nftables conntrack iproute2 procps
  # the namespace lab: a server in the "container", a client, inspection
  busybox-static curl bpftool kmod util-linux
  # the real components of the incident tests: dockerd (with containerd, runc), firewalld,
  # Podman (rootful and rootless: conmon, its runtime, slirp4netns, newuidmap) and its network
  # backend netavark (also run by hand, as Podman runs it)
  docker.io firewalld dbus netavark podman slirp4netns uidmap
  # cargo xtask bench: load, the kernel's own counters, the peer tool it is compared with
  iperf3 bpftrace
  # reading droptrace's pcapng and validating its metrics in the tests; man renders its pages;
  # systemd-analyze verifies the recorder's unit
  tshark prometheus man-db bash-completion systemd
  # build: C toolchain for -sys crates, git for cargo; a virtualenv for the Python test tools
  build-essential pkg-config git ca-certificates python3-venv
  # cargo xtask vm, the kernel matrix and the engine guests: guests under QEMU, their Debian
  # userlands (debootstrap), and the tools that unpack Debian's kernel modules
  qemu-system-x86 debootstrap xz-utils zstd
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

if ! cargo "+$TOOLCHAIN" fuzz --version >/dev/null 2>&1; then
  say "cargo-fuzz (the parsers' fuzz targets, fuzz/)"
  cargo "+$TOOLCHAIN" install cargo-fuzz@0.13.2 --locked >/dev/null 2>"$llvm_prefix/cargo-fuzz-install.log" \
    || die "installing cargo-fuzz failed (log: $llvm_prefix/cargo-fuzz-install.log)"
fi

# The tests validate deploy/daemonset.yaml against the Kubernetes schema with this validator
# (PyPI), in a virtualenv of its own so the system's Python stays untouched.
TOOLS_VENV=/opt/droptrace-tools/venv
if ! "$TOOLS_VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx 1.37.0; then
  say "kubernetes-validate 1.37.0 (PyPI) in $TOOLS_VENV"
  python3 -m venv "$TOOLS_VENV" \
    || die "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"
  "$TOOLS_VENV/bin/pip" install --quiet kubernetes-validate==1.37.0 \
    || die "pip could not install kubernetes-validate: check access to PyPI"
fi
ln -sf "$TOOLS_VENV/bin/kubernetes-validate" /usr/local/bin/kubernetes-validate

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
say "cargo xtask dist (the static binary, for any x86_64 Linux)"
cargo xtask dist >/dev/null || die "the static build failed: see the compiler output above"
say "built: $(pwd)/target/dist/droptrace (static: copy it to any x86_64 host)"

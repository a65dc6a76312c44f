#!/usr/bin/env bash
# For a TEST machine, not the host that has an incident: installs what droptrace's tests use
# — real container engines (docker.io, Podman), a firewall manager (firewalld) with dbus,
# Prometheus, tshark, QEMU and debootstrap for the kernel matrix, bpftrace and iperf3 for the
# bench, the fuzzing and manifest-validation tools — then builds droptrace (scripts/setup.sh),
# the static binary, and runs the tests (cargo test --locked).
#
# The tests start their own dockerd, firewalld and dbus by hand inside their own namespaces, so
# the packages' services are installed with starting them forbidden (a policy-rc.d for the
# duration of the install): installing them must not change this machine's firewall either.
#
# Usage: scripts/test.sh              (install, build, test)
#        SKIP_APT=1 scripts/test.sh   (build and test only)
#        scripts/test.sh ARGS         (ARGS go to cargo test, e.g. --test drops)
set -euo pipefail

cd "$(dirname "$0")/.."

say() { printf '[test] %s\n' "$*" >&2; }
die() { printf '[test] error: %s\n' "$*" >&2; exit 1; }

say "TEST machine setup: installs container engines, firewalld, dbus, Prometheus and QEMU for the tests (their services are not started); do not run this on a host you care about"
[ "$(id -u)" -eq 0 ] || die "run as root: the tests load eBPF programs and build network namespaces (sudo $0)"

TEST_PACKAGES=(
  # the real components of the incident tests: dockerd (with containerd, runc), firewalld,
  # Podman (rootful and rootless: conmon, its runtime, slirp4netns, newuidmap) and its network
  # backend netavark (also run by hand, as Podman runs it)
  docker.io firewalld dbus netavark podman slirp4netns uidmap
  # cargo xtask bench: load, the kernel's own counters, the peer tool it is compared with
  iperf3 bpftrace bpftool
  # reading droptrace's pcapng and validating its metrics in the tests; man renders its pages;
  # systemd-analyze verifies the recorder's unit
  tshark prometheus man-db bash-completion systemd
  # a virtualenv for the Python test tools
  python3-venv
  # cargo xtask vm, the kernel matrix and the engine guests: guests under QEMU, their Debian
  # userlands (debootstrap), and the tools that unpack Debian's kernel modules
  qemu-system-x86 debootstrap xz-utils zstd
)

if [ "${SKIP_APT:-0}" != 1 ]; then
  command -v apt-get >/dev/null || die "apt-get not found: the tests support Debian 12; install the equivalents of: ${TEST_PACKAGES[*]}"
  # Forbid service starts while installing (invoke-rc.d and deb-systemd-invoke ask
  # policy-rc.d; 101 = action forbidden). A machine's own policy-rc.d is left as it is.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
    made_policy=1
    trap 'if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  fi
  say "apt-get install ${TEST_PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: check the machine's package sources"
  apt-get install -y -qq --no-install-recommends "${TEST_PACKAGES[@]}" >/dev/null \
    || die "apt-get install failed for: ${TEST_PACKAGES[*]}"
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; made_policy=0; fi
fi

# The build machine's part: toolchain, bpf-linker, release build.
bash scripts/setup.sh

TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
llvm_prefix=${CARGO_HOME:-$HOME/.cargo}/droptrace-llvm/$TOOLCHAIN

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

say "cargo xtask dist (the static binary: the image and the guests run it)"
cargo xtask dist >/dev/null || die "the static build failed: see the compiler output above"

say "cargo test --locked $*"
cargo test --locked "$@"

#!/bin/bash
# The guest's init (PID 1) in `cargo xtask vm`: mounts what a host has, runs each step named on
# the kernel command line under a watchdog, prints a result marker per step on the serial
# console (the host scrapes them) and powers off. A step that outlives its limit gets its
# threads' stacks printed, is killed and counted as a hang; the guest always powers off.
#   dtvm.steps=probe,demo,drops   dtvm.limit=SECS (per step)   dtvm.budget=SECS (whole guest)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 RUST_BACKTRACE=0

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devpts devpts /dev/pts 2>/dev/null || { mkdir -p /dev/pts; mount -t devpts devpts /dev/pts; }
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
# /dev/net/tun as a host's udev leaves it, open to every user (rootless Podman's pasta and
# slirp4netns need it; devtmpfs alone makes it root's).
modprobe tun 2>/dev/null && chmod 666 /dev/net/tun
hostname droptrace-vm

arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^dtvm\.$1=//p"; }
steps=$(arg steps | tr ',' ' ')
limit=$(arg limit); limit=${limit:-600}
budget=$(arg budget); budget=${budget:-1800}

poweroff_now() { sync; echo o >/proc/sysrq-trigger; sleep 30; }

# Every thread of every process in process group $1: state, wait channel and kernel stack,
# then the user stacks where eu-stack can read them (it stops each process while it reads).
group() { ps -eo pid=,pgid= | awk -v g="$1" '$2 == g { print $1 }'; }
stacks() {
  local p t
  for p in $(group "$1"); do
    [ -d /proc/$p ] || continue
    echo "--- pid $p: $(tr '\0' ' ' </proc/$p/cmdline 2>/dev/null)"
    for t in /proc/$p/task/*; do
      echo "thread ${t##*/} $(cat $t/comm 2>/dev/null) state=$(awk '/^State/ {print $2}' $t/status 2>/dev/null) wchan=$(cat $t/wchan 2>/dev/null)"
      sed 's/^/    /' $t/stack 2>/dev/null
    done
  done
  command -v eu-stack >/dev/null || return 0
  for p in $(group "$1"); do
    echo "--- user stacks of pid $p"
    timeout 20 eu-stack -p "$p" 2>&1 | sed 's/^/    /'
  done
}

# The guest's own deadline: whatever hangs, the machine powers off.
( sleep "$budget"; echo "@@DTVM budget exhausted after ${budget}s@@"; dmesg -n 8; echo t >/proc/sysrq-trigger; poweroff_now ) &

uname -r | sed 's/^/@@DTVM kernel /; s/$/@@/'
# Files the tests leave for the host (real engines' rules and API answers): printed at the
# end as a base64 tarball between markers; `cargo xtask vm` unpacks them.
export DROPTRACE_FIXTURES=/tmp/fixtures
mkdir -p "$DROPTRACE_FIXTURES"

refused=
for step in $steps; do
  # A kernel droptrace refuses fails every test the same way: say so once, still run the demo
  # (it must fail fast and clearly there too).
  if [ -n "$refused" ] && [ "$step" != demo ]; then
    echo "@@DTVM step=$step skipped: $refused@@"
    continue
  fi
  # A step this userland cannot run (the payload's skip/STEP says why).
  if [ -f /droptrace-vm/skip/"$step" ]; then
    echo "@@DTVM step=$step skipped: $(cat /droptrace-vm/skip/"$step")@@"
    continue
  fi
  case $step in
    probe) cmd=(/droptrace-vm/droptrace watch --port 5000 --duration 1 --json) ;;
    demo) cmd=(/droptrace-vm/droptrace demo) ;;
    *) cmd=(/droptrace-vm/tests/"$step" --test-threads=2 --color=never) ;;
  esac
  echo "@@DTVM step=$step begin@@"
  t0=$(date +%s.%N)
  # setsid: the step is a process group of its own, so a hung step is killed whole.
  DROPTRACE_BIN=/droptrace-vm/droptrace setsid "${cmd[@]}" </dev/null 2>&1 &
  pid=$!
  ( sleep "$limit"
    if kill -0 "$pid" 2>/dev/null; then
      echo "@@DTVM step=$step hang after ${limit}s: threads' stacks follow@@"
      stacks "$pid"
      kill -KILL -- -"$pid"
    fi ) &
  dog=$!
  wait "$pid"; rc=$?
  kill "$dog" 2>/dev/null; wait "$dog" 2>/dev/null
  secs=$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }")
  echo "@@DTVM step=$step end rc=$rc secs=$secs@@"
  [ "$step" = probe ] && [ "$rc" -eq 3 ] && refused="droptrace refused this kernel (exit 3)"
done
if [ -n "$(ls -A "$DROPTRACE_FIXTURES")" ]; then
  echo "@@DTVM artifacts begin@@"
  tar -C "$DROPTRACE_FIXTURES" -cz . | base64 -w 120
  echo "@@DTVM artifacts end@@"
fi
echo "@@DTVM done@@"
poweroff_now

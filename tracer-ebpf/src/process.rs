//! Who is doing something, read in the kernel in the writer's own context: pid, name,
//! cgroup, four ancestors and the command line. Offsets (task_struct, mm_struct, nsproxy) come
//! from the running kernel's BTF through OFFSETS, like everything else.
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_probe_read_kernel, generated::bpf_get_current_task, generated::bpf_probe_read_user,
};
use tracer_common::{ANCESTORS, ARGS_LEN, ChangeEvent, KernelOffsets, Process};

use crate::maps::{CHANGES, CONFIG, OFFSETS, bump};

#[inline(always)]
fn read<T>(base: u64, off: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel never faults; T is plain data.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }
}

/// The current task (`struct task_struct *`).
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_current_task() }
}

/// nsfs inode of a task's network namespace (0 if unreadable).
#[inline(always)]
pub fn task_netns(task: u64, off: &KernelOffsets) -> u32 {
    let nsproxy: u64 = read(task, off.task_nsproxy).unwrap_or(0);
    if nsproxy == 0 {
        return 0;
    }
    let net: u64 = read(nsproxy, off.nsproxy_net_ns).unwrap_or(0);
    if net == 0 {
        return 0;
    }
    read(net, off.net_ns_inum).unwrap_or(0)
}

/// Fills `p` with the current task's identity.
///
/// # Safety
/// `p` must point to writable memory of a `Process` (a ring reservation or a map value).
#[inline(always)]
pub unsafe fn fill_current(p: *mut Process, off: &KernelOffsets) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the caller guarantees `p` is a writable Process.
    let p = unsafe { &mut *p };
    p.pid = (pid_tgid >> 32) as u32;
    p.tid = pid_tgid as u32;
    p.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: a helper without arguments.
    p.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    p._pad = 0;

    let task = current_task();
    let mut t = task;
    for i in 0..ANCESTORS {
        t = if t == 0 {
            0
        } else {
            read(t, off.task_real_parent).unwrap_or(0)
        };
        let a = &mut p.ancestors[i];
        if t == 0 {
            a.pid = 0;
            a.comm = [0; 16];
            continue;
        }
        a.pid = read(t, off.task_tgid).unwrap_or(0);
        a.comm = read(t, off.task_comm).unwrap_or([0; 16]);
    }

    p.args_len = 0;
    let mm: u64 = read(task, off.task_mm).unwrap_or(0);
    if mm == 0 {
        return;
    }
    let start: u64 = read(mm, off.mm_arg_start).unwrap_or(0);
    let end: u64 = read(mm, off.mm_arg_end).unwrap_or(0);
    if start == 0 || end <= start {
        return;
    }
    let mut len = end - start;
    if len > (ARGS_LEN - 1) as u64 {
        len = (ARGS_LEN - 1) as u64;
    }
    // The mask makes the bound visible to the verifier.
    let len = (len & 0xff) as u32;
    // SAFETY: `args` has ARGS_LEN (256) bytes and len <= 255; the source is the current
    // task's own memory, read with the fault-tolerant user-read helper.
    let rc = unsafe {
        bpf_probe_read_user(
            p.args.as_mut_ptr().cast(),
            len,
            start as *const core::ffi::c_void,
        )
    };
    if rc == 0 {
        p.args_len = len;
    }
}

/// The current task's network namespace when it is the watched one (or every namespace is
/// watched); None otherwise, so change probes return before doing any work.
#[inline(always)]
pub fn watched_netns() -> Option<u32> {
    let (netns, watched) = current_netns();
    watched.then_some(netns)
}

/// The current task's network namespace, and whether it is watched.
#[inline(always)]
pub fn current_netns() -> (u32, bool) {
    let off = OFFSETS.load();
    let cfg = CONFIG.load();
    let netns = task_netns(current_task(), &off);
    (netns, cfg.netns == 0 || netns == cfg.netns)
}

/// Reserves a ChangeEvent, writes its header, `name` and the writer's identity, lets `fill`
/// write the values, and submits it. A full ring is counted, never waited for.
#[inline(always)]
pub fn emit_change(kind: u32, netns: u32, name: [u8; 64], fill: impl FnOnce(*mut ChangeEvent)) {
    let Some(mut entry) = CHANGES.reserve::<ChangeEvent>(0) else {
        bump(tracer_common::stat::RING_LOST);
        aya_log_ebpf::warn!(&(), "change ring full: a change of kind {} is lost", kind);
        return;
    };
    let ev = entry.as_mut_ptr();
    let off = OFFSETS.load();
    // SAFETY: `ev` is the ring reservation, sized for a ChangeEvent and ours until submit;
    // every field userspace reads is written here or by `fill` (values zeroed first).
    unsafe {
        (*ev).ktime_ns = aya_ebpf::helpers::bpf_ktime_get_ns();
        (*ev).kind = kind;
        (*ev).netns = netns;
        (*ev).name = name;
        (*ev).old_value = [0; 16];
        (*ev).new_value = [0; 16];
        fill_current(&raw mut (*ev).process, &off);
    }
    fill(ev);
    entry.submit(0);
}

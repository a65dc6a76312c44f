//! Every program started in the watched namespace, with its command line and ancestors, kept
//! in EXECS by pid. nf_tables changes name only the committing process's pid and name (from
//! the netlink monitor); this is where the rest of its identity is found, even after it exited.
//!
//! tp_btf sched_process_exec (Linux >= 5.5 with BTF):
//!   TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
//!   runs in the new program's context (current == p, the new mm is in place); checked on 6.18.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    maps::{EXECS, OFFSETS, SCRATCH},
    process::{fill_current, watched_netns},
};

#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec(_ctx: BtfTracePointContext) -> i32 {
    if watched_netns().is_none() {
        return 0;
    }
    let off = OFFSETS.load();
    let Some(p) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program (no
    // preemption of a tracing program by itself on one CPU).
    unsafe {
        fill_current(p, &off);
        let _ = EXECS.insert(&(*p).pid, &*p, 0);
    }
    0
}

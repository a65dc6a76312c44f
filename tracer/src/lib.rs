//! droptrace: why are packets to my published port being dropped, and who caused it?
//!
//! A drop travels through five stages, one directory each:
//! 1. [`discover`] — which ports to watch and where: the container engine's API or the
//!    namespace's DNAT rules, and the namespace itself (`discover::netns`).
//! 2. [`load`] — `load::kernel` inspects the running kernel once (BTF, tracepoint prototypes,
//!    mounts) and each optional hook declares what it needs; `load::ebpf` loads the kernel
//!    side, picks each program for this kernel and attaches what it can; `load::nfprobe` links
//!    the netfilter hook probes aya cannot load.
//! 3. [`observe`] — `observe::event` decodes ring records into typed facts (a drop, a kernel
//!    answer); `observe::correlate` pairs a drop with the answer sent just before it;
//!    `observe::changes` names who changed a sysctl or a ruleset; `observe::state` reads the
//!    sysctls and rulesets; `observe::tracerules` is `--trace-rules`.
//! 4. [`attribute`] — pure: facts + state → a typed diagnosis (`attribute::rules`, shared with
//!    `check`), grouped into one verdict per (port, cause) (`attribute::verdict`), with the
//!    change that caused it (`attribute::culprit`).
//! 5. [`report`] — every output is a [`report::Sink`]: human and JSON Lines (`report::output`),
//!    pcapng and the evidence bundle (`report::evidence`), Prometheus (`report::metrics`), the
//!    terminal's progress line; `report::words` holds every sentence and fix.
//!
//! The commands in [`cmd`] wire the stages: `watch` (the loop), `ports` and `check`
//! (`cmd::preflight`, without eBPF), `report` and `demo` (the incident replayed in the namespaces of
//! its lab, `cmd::demo::lab`), `record` (the always-on recorder: `load`'s change probes and `observe::changes`
//! into the [`journal`]) and `history` (the journal, read); `watch` and `check` ask the journal
//! for a culprit older than themselves.

pub mod attribute;
pub mod discover;
pub mod journal;
pub mod load;
pub mod observe;
pub mod report;

pub mod cli;
pub mod cmd;
pub mod error;
/// The demo's namespace lab (`cmd::demo::lab`), also the tests' and the bench's.
pub use cmd::demo::lab;

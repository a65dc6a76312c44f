//! droptrace: why are packets to my published port being dropped, and who caused it?
//!
//! A drop travels through these stages (the modules of each stage are grouped below):
//! 1. **discover** — which ports to watch and where: `discover` (the container engine's API,
//!    or the namespace's DNAT rules) and `netns` (the namespace, its tools, its interfaces).
//! 2. **load** — `kernel` inspects the running kernel once (BTF, prototypes, mounts);
//!    `loader` loads the eBPF object, picks each program for this kernel's prototypes and
//!    attaches the optional hooks it can; `nfprobe` links the netfilter hook probes aya
//!    cannot load.
//! 3. **observe** — `event` turns ring records into named drops and signals; `changes` names
//!    who changed a sysctl or a ruleset; `state` reads sysctls and rulesets (the evidence);
//!    `tracerules` is `--trace-rules`.
//! 4. **attribute** — `attribute` is the pure engine (facts + state → cause, place, fix);
//!    `verdict` groups drops into one verdict per (port, cause).
//! 5. **report** — `output` (human and JSON Lines), `evidence` (pcapng, the bundle, `report`),
//!    `metrics` (Prometheus).
//!
//! The commands wire the stages: `watch` (the loop), `preflight` and `check` (`ports` and
//! `check`, without eBPF), `demo` (the incident replayed in `lab`'s namespaces).

// discover
pub mod discover;
pub mod netns;
// load
pub mod kernel;
pub mod loader;
pub mod nfprobe;
// observe
pub mod changes;
pub mod event;
pub mod state;
pub mod tracerules;
// attribute
pub mod attribute;
pub mod verdict;
// report
pub mod evidence;
pub mod metrics;
pub mod output;
// commands and their wiring
pub mod check;
pub mod cli;
pub mod demo;
pub mod error;
pub mod lab;
pub mod preflight;
pub mod watch;

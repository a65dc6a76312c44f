//! droptrace: why are packets to my published port being dropped, and who caused it?
//!
//! The pipeline reads in module order: `kernel` (what the running kernel offers) →
//! `netns` (where to look) → `loader` (the eBPF side, attached) → `event` (raw → named) →
//! `output` (human / JSON Lines) → `watch` (the loop that ties them together). `lab` builds
//! the namespace lab that the integration tests and the demo use.
pub mod attribute;
pub mod changes;
pub mod check;
pub mod cli;
pub mod demo;
pub mod discover;
pub mod error;
pub mod event;
pub mod evidence;
pub mod kernel;
pub mod lab;
pub mod loader;
pub mod metrics;
pub mod netns;
pub mod nfprobe;
pub mod output;
pub mod preflight;
pub mod state;
pub mod tracerules;
pub mod verdict;
pub mod watch;

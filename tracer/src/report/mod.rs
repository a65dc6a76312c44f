//! Stage 5: every output of a run.
pub mod evidence;
pub mod fastline;
pub mod metrics;
pub mod output;
pub mod sink;
pub mod words;

//! The commands: thin wiring of the stages.
pub mod check;
pub mod demo;
pub mod preflight;
pub mod watch;

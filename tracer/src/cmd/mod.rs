//! The commands: thin wiring of the stages.
pub mod check;
pub mod demo;
pub mod history;
pub mod preflight;
pub mod record;
pub mod watch;

//! Stage 3: what happened, as typed facts — drops and the kernel's answers from the rings,
//! who changed what, and the namespace's state at the time.
pub mod changes;
pub mod correlate;
pub mod event;
pub mod facts;
pub mod infer;
pub mod payload;
pub mod rtnl;
pub mod state;
pub mod tracerules;

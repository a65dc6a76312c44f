// Empty library target: tracer has a build-dependency on this crate so that cargo rebuilds the
// embedded eBPF object whenever anything here changes. The programs live in the `droptrace` bin.
#![no_std]

//! keyturn-init end to end: the output formats, the refusals (nothing written, the right
//! exit code, no canary in any output), and the Vault paths (auth methods, engines, leases),
//! each against a real OpenBao and the Kubernetes stand-in. One binary, so the suite links
//! the dependency set once for all of them.

mod formats;
mod refusals;
mod support;
mod vault;

//! The fault-injection suite: the daemon with many policies across stores and targets, while
//! the servers behind it refuse, reset, stall, answer errors, restart or run out of disk.
//! Each scenario counts the requests the failing server received (at a fault proxy or the
//! Kubernetes stand-in), checks that no credential was lost and the audit chain verifies,
//! that metrics and `/readyz` tell the truth during the fault, and that everything converges
//! once the fault clears.

mod kube_audit;
mod vault_pg;

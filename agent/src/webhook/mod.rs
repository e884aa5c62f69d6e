//! `keyturn webhook`: the mutating admission webhook that puts keyturn-init into pods
//! annotated for the Vault Agent Injector, so such a pod works unchanged.
//!
//! - [`inject`]: the decision for one pod — skip, inject (a JSONPatch and warnings) or deny —
//!   from its annotations and the webhook's settings. Pure: no I/O, unit-tested.
//! - [`review`]: AdmissionReview in and out (v1 and v1beta1, answered in the version asked),
//!   and the 400 for anything that is not one.
//! - [`certs`]: the in-memory CA and the short-lived serving certificate, renewed well before
//!   expiry and swapped live (or a certificate from files, for cert-manager).
//! - [`server`]: the HTTPS listener for `/mutate`, and `/metrics`, `/healthz`, `/readyz`.
//! - [`cabundle`]: membership Leases carrying each replica's CA, and the one replica (by
//!   Lease) that writes their union into the MutatingWebhookConfiguration's `caBundle`.
//! - [`events`]: Kubernetes Events ("Injected", "InjectionDenied") on the pod's owner.
//! - [`metrics`]: admissions by outcome, admission latency, certificate expiry.

pub mod cabundle;
pub mod certs;
pub mod events;
pub mod inject;
pub mod metrics;
pub mod review;
pub mod server;

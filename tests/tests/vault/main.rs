//! keyturn-core's Vault client against a real OpenBao: reads, writes, errors and retries
//! (`client`), and the Kubernetes auth method through the stand-in's TokenReview
//! (`auth_kube`).

mod auth_kube;
mod client;

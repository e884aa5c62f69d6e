//! What ships: the static binaries and their scratch images, the Helm chart, and the alerts
//! and dashboard, each checked by the real tool its users run (podman, hadolint, helm,
//! kubernetes-validate, checkov, promtool, Prometheus).

mod alerts;
mod chart;
mod crd;
mod images;

//! Kubernetes: the API stand-in behaving as the real API server does (and real `kubectl`
//! against it), and keyturn's delivery into Secrets and rollout restarts through it. Every
//! test here also runs against a real cluster when `KEYTURN_TEST_KUBECONFIG` is set.

mod admission;
mod crd;
mod distribute;
mod inject;
mod membership;
mod policy_cli;
mod policy_daemon;
mod policy_source;
mod policy_status;
mod rotationpolicy_crd;
mod standin;
mod standin_paging;
mod watch;
mod webhook_tls;

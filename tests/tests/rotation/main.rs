//! Rotation end to end, one module per store, target or way of running it, each against its
//! real server: the Vault KV and AWS Secrets Manager stores (the store contract suite), the
//! PostgreSQL, Redis and MySQL/MariaDB targets (single and alternating users, the crash
//! matrix, an app that keeps logging in through rotations, canaries absent from every log
//! the servers write), `keyturn rotate` and `keyturn run` as processes.

mod aws;
mod daemon;
mod e2e;
mod mysql;
mod postgres;
mod redis;
mod replicas;
#[path = "../support/mod.rs"]
mod support;
mod vault;

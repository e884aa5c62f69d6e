//! keyturn-tests: a harness that starts real servers on loopback for keyturn's tests and demo.
//!
//! Each server gets a free loopback port of its own and is stopped when its handle drops, so
//! tests run in parallel without sharing state.

pub mod kube;

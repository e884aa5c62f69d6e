//! keyturn-init: the pod init container. It logs in to Vault (or OpenBao) with the pod's
//! identity, fetches the secrets its manifest declares, writes them into a memory-backed
//! directory — atomically, all or nothing — and exits with a code that says what happened.
//!
//! - [`cli`]: flags (each also an environment variable).
//! - [`manifest`]: the manifest schema and its validation, with `file:line:col` errors;
//!   [`annotations`]: the same from Vault Agent Injector annotations.
//! - [`paths`]: the output directory's checks (tmpfs, no symlinks, relative paths).
//! - [`auth`]: the `vault:` block into a login; [`fetch`]: concurrent reads under one
//!   deadline; [`audit`]: one event per read, before anything is written.
//! - [`render`] (with [`render::template`]): the file formats.
//! - [`write`]: atomic, all-or-nothing writes that leave unchanged files alone.
//! - [`exit`]: exit codes; [`run`]: the order of it all.
//! - [`text`]: outside text (names, paths, flag values, Vault's words) made safe to print.

pub mod annotations;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod compat;
pub mod exit;
pub mod fetch;
pub mod manifest;
pub mod paths;
pub mod render;
pub mod run;
pub use keyturn_core::text;
pub mod write;

//! The `keyturn` commands an operator runs by hand, end to end against real servers:
//! `audit search`, `doctor` and `status`, and `break-glass`.

mod audit_search;
mod break_glass;
mod doctor_status;
#[path = "../support/mod.rs"]
mod support;

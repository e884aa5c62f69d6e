//! The audit trail (being written).

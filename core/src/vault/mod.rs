//! Vault access (being written).

//! Kubernetes API stand-in (being written).

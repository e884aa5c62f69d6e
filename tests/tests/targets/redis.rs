//! Redis ACL users (see main.rs).

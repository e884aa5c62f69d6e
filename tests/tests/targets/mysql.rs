//! MySQL/MariaDB users (see main.rs).

//! The rotation targets beyond PostgreSQL, each against its real server: Redis ACL users and
//! MySQL/MariaDB users. Each module proves the same things for its target: `single` and
//! `alternating` rotations through `keyturn rotate`, the crash matrix (a crash after every
//! engine step converges on the next run), an app that keeps logging in with whatever
//! CURRENT holds through ten alternating rotations without one failure, and canaries absent
//! from every log the server and keyturn write.

mod mysql;
mod redis;

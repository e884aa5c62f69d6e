//! Exit codes, shared by every subcommand (sysexits(3) where one fits).

/// Success.
pub const OK: u8 = 0;
/// The command ran and the answer is "no": e.g. `audit verify` found the chain broken.
pub const FAILED: u8 = 1;
/// Bad usage or configuration, found before touching anything (`EX_USAGE`).
pub const USAGE: u8 = 64;
/// A required service is unavailable (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;
/// An internal error (`EX_SOFTWARE`).
pub const SOFTWARE: u8 = 70;
/// An input/output error: a file that cannot be read or written (`EX_IOERR`).
pub const IO: u8 = 74;
/// Permission denied (`EX_NOPERM`).
pub const NO_PERMISSION: u8 = 77;

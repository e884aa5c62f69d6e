//! Process and filesystem facts keyturn relies on: no core dumps, and memory-backed output.
//!
//! Both go through `rustix`, so keyturn needs no `unsafe` of its own for them.

use std::path::Path;

use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};

/// `statfs` magic of tmpfs (linux/magic.h).
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `statfs` magic of ramfs (linux/magic.h).
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Why core dumps could not be turned off.
#[derive(Debug, thiserror::Error)]
pub enum CoreDumpError {
    /// `setrlimit(RLIMIT_CORE, 0, 0)` failed.
    #[error("cannot set the core file size limit (RLIMIT_CORE) to 0: {0}")]
    Limit(#[source] std::io::Error),
    /// `prctl(PR_SET_DUMPABLE, 0)` failed.
    #[error("cannot mark the process non-dumpable (prctl PR_SET_DUMPABLE): {0}")]
    Dumpable(#[source] std::io::Error),
}

/// Makes sure no core file of this process can ever exist, and that no other process of the
/// same user can read its memory. Call it first thing in `main`, before any configuration or
/// secret is read.
///
/// Two independent locks, because each alone has a gap:
///
/// - `RLIMIT_CORE` 0, soft *and* hard: the kernel writes no core file, and since the hard
///   limit is 0 too, nothing in this process (a library, a later `setrlimit`) can raise it
///   again without `CAP_SYS_RESOURCE`. But when `core_pattern` pipes cores to a handler
///   (systemd-coredump, apport), the kernel starts the handler whatever the limit and leaves
///   honouring it to the handler.
/// - `prctl(PR_SET_DUMPABLE, 0)`: no core, not even to a pipe handler, and no `ptrace`
///   attach or `/proc/PID/mem` read by other processes of the same user. But an `execve`
///   resets it, so it guards only this image.
///
/// # Errors
/// When the kernel refuses either call (a seccomp filter could); the caller should not go on.
pub fn disable_core_dumps() -> Result<(), CoreDumpError> {
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    setrlimit(Resource::Core, none).map_err(|e| CoreDumpError::Limit(e.into()))?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(|e| CoreDumpError::Dumpable(e.into()))
}

/// Whether `dir` lives on a memory-backed filesystem (tmpfs or ramfs), so secrets written
/// there never reach a disk.
///
/// # Errors
/// When `statfs` fails on `dir` (missing, permission denied).
pub fn is_memory_backed(dir: &Path) -> std::io::Result<bool> {
    Ok(is_memory_fs(&rustix::fs::statfs(dir)?))
}

/// [`is_memory_backed`] for a directory already open (an `O_PATH` descriptor will do):
/// `fstatfs`, so the path is not resolved again and cannot have been swapped since.
///
/// # Errors
/// When `fstatfs` fails.
pub fn is_memory_backed_fd(dir: impl std::os::fd::AsFd) -> std::io::Result<bool> {
    Ok(is_memory_fs(&rustix::fs::fstatfs(dir)?))
}

fn is_memory_fs(st: &rustix::fs::StatFs) -> bool {
    // f_type's integer type differs between targets; widen before comparing.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let magic = i64::from(st.f_type as i64);
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_shm_is_memory_backed_and_the_build_dir_is_not() {
        if Path::new("/dev/shm").exists() {
            assert!(is_memory_backed(Path::new("/dev/shm")).unwrap());
        }
        // procfs is never memory-backed storage, wherever the tests run.
        assert!(!is_memory_backed(Path::new("/proc")).unwrap());
        assert!(!is_memory_backed(Path::new("/proc/self")).unwrap());
    }

    #[test]
    fn the_descriptor_and_the_path_agree() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let fd = std::fs::File::open(here).unwrap();
        assert_eq!(
            is_memory_backed_fd(&fd).unwrap(),
            is_memory_backed(here).unwrap()
        );
    }

    #[test]
    fn disabling_core_dumps_zeroes_both_core_limits_and_clears_dumpable() {
        disable_core_dumps().unwrap();
        let limit = rustix::process::getrlimit(Resource::Core);
        assert_eq!((limit.current, limit.maximum), (Some(0), Some(0)));
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            DumpableBehavior::NotDumpable
        );
        // Idempotent: lowering a limit to what it already is, and clearing a clear flag, work.
        disable_core_dumps().unwrap();
    }
}

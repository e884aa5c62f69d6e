//! Process and filesystem facts keyturn relies on: no core dumps, and memory-backed output.
//!
//! Both go through `rustix`, so keyturn needs no `unsafe` of its own for them.

use std::path::Path;

use rustix::process::{DumpableBehavior, set_dumpable_behavior};

/// `statfs` magic of tmpfs (linux/magic.h).
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `statfs` magic of ramfs (linux/magic.h).
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Marks the process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core file, and no
/// `ptrace` attach or `/proc/PID/mem` read by other processes of the same user. Call it
/// before any secret is fetched.
///
/// # Errors
/// When the kernel refuses the `prctl`.
pub fn disable_core_dumps() -> std::io::Result<()> {
    set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(std::io::Error::from)
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
        // The crate's own directory is on the build disk, never a tmpfs in CI or here.
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        if !is_memory_backed(here).unwrap() {
            return;
        }
        eprintln!("note: the source tree is on tmpfs; skipping the negative check");
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
    fn disabling_core_dumps_succeeds() {
        disable_core_dumps().unwrap();
    }
}

//! Where secrets may be written, checked before any network call.
//!
//! - A manifest's `file` is a [`RelPath`]: relative, no `..`, no NUL, normalized (`./a//b`
//!   is `a/b`), so two spellings of one file are caught as duplicates.
//! - The output directory is opened component by component with `openat(O_NOFOLLOW)`, so a
//!   symbolic link anywhere in its path is refused rather than followed, and it must be on
//!   tmpfs or ramfs unless `--allow-disk` is given.
//! - Each target is looked at with `fstatat(AT_SYMLINK_NOFOLLOW)` relative to the directory's
//!   descriptor: a symlink or a non-regular file where a secret should go is refused.
//!
//! The checks here are the early, friendly ones; [`crate::write`] repeats the no-follow
//! discipline at write time, so a path swapped for a symlink in between is still not
//! followed.

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::exit::{ExitCode, HasExitCode};

/// The longest file-name component Linux accepts.
const NAME_MAX: usize = 255;

/// A normalized path relative to the output directory: one or more plain components.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(Vec<String>);

/// Why a `file` value is not a usable relative path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelPathError {
    /// Nothing but separators and dots.
    #[error("file {0:?} names no file")]
    Empty(String),
    /// Starts with `/`.
    #[error("file {0:?} is absolute; give a path relative to the output directory")]
    Absolute(String),
    /// Has a `..` component.
    #[error("file {0:?} contains \"..\"; it must stay inside the output directory")]
    DotDot(String),
    /// Has a NUL byte.
    #[error("file {0:?} contains a NUL byte")]
    Nul(String),
    /// Has another control character (a newline, an escape): such a name breaks every tool
    /// that lists the directory, and can drive a terminal that shows it.
    #[error("file {0:?} contains a control character")]
    Control(String),
    /// A component is longer than the kernel allows.
    #[error("file {0:?} has a component longer than {NAME_MAX} bytes")]
    TooLong(String),
}

impl RelPath {
    /// Parses and normalizes `s`.
    ///
    /// # Errors
    /// See [`RelPathError`].
    pub fn parse(s: &str) -> Result<Self, RelPathError> {
        if s.starts_with('/') {
            return Err(RelPathError::Absolute(s.to_owned()));
        }
        if s.contains('\0') {
            return Err(RelPathError::Nul(s.to_owned()));
        }
        if s.chars().any(char::is_control) {
            return Err(RelPathError::Control(s.to_owned()));
        }
        let mut parts = Vec::new();
        for c in s.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(RelPathError::DotDot(s.to_owned())),
                c if c.len() > NAME_MAX => return Err(RelPathError::TooLong(s.to_owned())),
                c => parts.push(c.to_owned()),
            }
        }
        if parts.is_empty() {
            return Err(RelPathError::Empty(s.to_owned()));
        }
        Ok(Self(parts))
    }

    /// The components, outermost first.
    #[must_use]
    pub fn components(&self) -> &[String] {
        &self.0
    }

    /// The directories above the file (empty for a file directly in the output directory).
    #[must_use]
    pub fn parents(&self) -> &[String] {
        &self.0[..self.0.len() - 1]
    }

    /// The last component.
    #[must_use]
    pub fn file_name(&self) -> &str {
        &self.0[self.0.len() - 1]
    }

    /// Whether `self` is a directory above `other` (`a` is above `a/b`).
    #[must_use]
    pub fn is_ancestor_of(&self, other: &RelPath) -> bool {
        self.0.len() < other.0.len() && other.0.starts_with(&self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

/// A problem with the output directory or a target in it.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// A component of the path is a symbolic link.
    #[error("{path}: is a symbolic link; refusing to follow it")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A component that must be a directory is not one.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The component.
        path: PathBuf,
    },
    /// The output directory does not exist.
    #[error("{path}: does not exist")]
    Missing {
        /// The missing component.
        path: PathBuf,
    },
    /// Something other than a regular file is where a secret should be written.
    #[error("{path}: exists and is not a regular file")]
    NotARegularFile {
        /// The target.
        path: PathBuf,
    },
    /// The output directory would put secrets on a disk.
    #[error(
        "{path}: not on tmpfs or ramfs, so secrets would reach a disk (mount a memory-backed volume, or pass --allow-disk)"
    )]
    NotMemoryBacked {
        /// The directory.
        path: PathBuf,
    },
    /// Any other system-call failure.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The operation (`open`, `stat`, `statfs`).
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

impl HasExitCode for PathError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::Io
    }
}

/// What is at a target's place now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Nothing (possibly not even its parent directories).
    Absent,
    /// A regular file.
    Regular,
}

/// An open output directory that passed the checks.
#[derive(Debug)]
pub struct OutDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl OutDir {
    /// Opens `path` without following symlinks in any component, and checks that it is
    /// memory-backed unless `allow_disk`.
    ///
    /// # Errors
    /// See [`PathError`].
    pub fn open(path: &Path, allow_disk: bool) -> Result<Self, PathError> {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut absolute = false;
        for c in path.components() {
            match c {
                Component::RootDir => absolute = true,
                Component::CurDir => {}
                Component::ParentDir => names.push(OsStr::new("..")),
                Component::Normal(n) => names.push(n),
                Component::Prefix(_) => {}
            }
        }
        if names.is_empty() {
            names.push(OsStr::new("."));
        }
        let mut shown = PathBuf::from(if absolute { "/" } else { "" });
        let mut cur: Option<OwnedFd> = None;
        if absolute {
            let root = rustix::fs::openat(CWD, "/", dir_flags(false), Mode::empty())
                .map_err(|e| io_err("/".into(), "open", e))?;
            cur = Some(root);
        }
        let last = names.len() - 1;
        for (i, name) in names.iter().enumerate() {
            shown.push(name);
            let parent = cur.as_ref().map_or(CWD, AsFd::as_fd);
            let next = open_dir(parent, name, &shown, i == last)?;
            cur = Some(next);
        }
        let fd = cur.expect("at least one component");
        if !allow_disk {
            // The descriptor just opened, not the path: no second walk of it, and nothing
            // swapped in since can be judged instead.
            match keyturn_core::sys::is_memory_backed_fd(&fd) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(PathError::NotMemoryBacked {
                        path: path.to_owned(),
                    });
                }
                Err(e) => {
                    return Err(PathError::Io {
                        path: path.to_owned(),
                        op: "statfs",
                        source: e,
                    });
                }
            }
        }
        Ok(Self {
            path: path.to_owned(),
            fd,
        })
    }

    /// The directory as given.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's descriptor.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `DIR/REL`, for messages.
    #[must_use]
    pub fn shown(&self, rel: &RelPath) -> PathBuf {
        self.path.join(rel.to_string())
    }

    /// What is at `rel` now. Missing parent directories are fine (they are created at write
    /// time); a symlink or a non-directory among them, or a symlink or non-regular file at
    /// the target, is refused.
    ///
    /// # Errors
    /// See [`PathError`].
    pub fn check_target(&self, rel: &RelPath) -> Result<TargetState, PathError> {
        let mut shown = self.path.clone();
        let mut cur: Option<OwnedFd> = None;
        for name in rel.parents() {
            shown.push(name);
            let parent = cur.as_ref().map_or(self.fd(), AsFd::as_fd);
            match open_dir(parent, OsStr::new(name), &shown, false) {
                Ok(fd) => cur = Some(fd),
                Err(PathError::Missing { .. }) => return Ok(TargetState::Absent),
                Err(e) => return Err(e),
            }
        }
        shown.push(rel.file_name());
        let parent = cur.as_ref().map_or(self.fd(), AsFd::as_fd);
        match rustix::fs::statat(parent, rel.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Ok(TargetState::Regular),
                FileType::Symlink => Err(PathError::Symlink { path: shown }),
                _ => Err(PathError::NotARegularFile { path: shown }),
            },
            Err(Errno::NOENT) => Ok(TargetState::Absent),
            Err(e) => Err(io_err(shown, "stat", e)),
        }
    }
}

fn dir_flags(readable: bool) -> OFlags {
    let access = if readable {
        OFlags::RDONLY
    } else {
        OFlags::PATH
    };
    access | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Opens the directory `name` under `parent` without following a symlink. `readable` opens
/// it for reading (needed to fsync it); otherwise `O_PATH`, which needs only search
/// permission.
pub(crate) fn open_dir(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    shown: &Path,
    readable: bool,
) -> Result<OwnedFd, PathError> {
    match rustix::fs::openat(parent, name.as_bytes(), dir_flags(readable), Mode::empty()) {
        Ok(fd) => Ok(fd),
        // O_NOFOLLOW|O_DIRECTORY on a symlink gives ELOOP or ENOTDIR depending on O_PATH;
        // look at the entry itself to say which it is.
        Err(Errno::NOTDIR | Errno::LOOP) => {
            match rustix::fs::statat(parent, name.as_bytes(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    Err(PathError::Symlink {
                        path: shown.to_owned(),
                    })
                }
                _ => Err(PathError::NotADirectory {
                    path: shown.to_owned(),
                }),
            }
        }
        Err(Errno::NOENT) => Err(PathError::Missing {
            path: shown.to_owned(),
        }),
        Err(e) => Err(io_err(shown.to_owned(), "open", e)),
    }
}

pub(crate) fn io_err(path: PathBuf, op: &'static str, e: Errno) -> PathError {
    PathError::Io {
        path,
        op,
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> Result<String, RelPathError> {
        RelPath::parse(s).map(|r| r.to_string())
    }

    #[test]
    fn relative_paths_are_normalized() {
        assert_eq!(rel("db.env").unwrap(), "db.env");
        assert_eq!(rel("./a//b/").unwrap(), "a/b");
        assert_eq!(rel("a/./b").unwrap(), "a/b");
    }

    #[test]
    fn absolute_paths_are_refused() {
        assert!(matches!(
            RelPath::parse("/etc/passwd"),
            Err(RelPathError::Absolute(_))
        ));
    }

    #[test]
    fn any_dot_dot_is_refused_even_one_that_stays_inside() {
        assert!(matches!(
            RelPath::parse("../x"),
            Err(RelPathError::DotDot(_))
        ));
        assert!(matches!(
            RelPath::parse("a/../b"),
            Err(RelPathError::DotDot(_))
        ));
    }

    #[test]
    fn empty_nul_and_overlong_names_are_refused() {
        assert!(matches!(RelPath::parse(""), Err(RelPathError::Empty(_))));
        assert!(matches!(RelPath::parse("./"), Err(RelPathError::Empty(_))));
        assert!(matches!(RelPath::parse("a\0b"), Err(RelPathError::Nul(_))));
        for name in ["db\n.env", "db\u{1b}[2J", "a/\u{7f}"] {
            assert!(
                matches!(RelPath::parse(name), Err(RelPathError::Control(_))),
                "{name:?}"
            );
        }
        assert!(matches!(
            RelPath::parse(&"x".repeat(256)),
            Err(RelPathError::TooLong(_))
        ));
    }

    #[test]
    fn ancestry_is_by_component_not_by_prefix() {
        let a = RelPath::parse("a").unwrap();
        assert!(a.is_ancestor_of(&RelPath::parse("a/b").unwrap()));
        assert!(!a.is_ancestor_of(&RelPath::parse("ab/c").unwrap()));
        assert!(!a.is_ancestor_of(&a));
    }

    #[test]
    fn a_disk_directory_is_refused_unless_allowed() {
        let d = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        if keyturn_core::sys::is_memory_backed(d.path()).unwrap() {
            return; // the build tree is on tmpfs here; nothing to check
        }
        assert!(matches!(
            OutDir::open(d.path(), false),
            Err(PathError::NotMemoryBacked { .. })
        ));
        OutDir::open(d.path(), true).unwrap();
    }

    #[test]
    fn a_symlink_anywhere_in_the_output_path_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::fs::create_dir(d.path().join("real/inner")).unwrap();
        std::os::unix::fs::symlink(d.path().join("real"), d.path().join("link")).unwrap();
        let e = OutDir::open(&d.path().join("link"), true).unwrap_err();
        assert!(
            matches!(&e, PathError::Symlink { path } if path.ends_with("link")),
            "{e}"
        );
        let e = OutDir::open(&d.path().join("link/inner"), true).unwrap_err();
        assert!(
            matches!(&e, PathError::Symlink { path } if path.ends_with("link")),
            "{e}"
        );
        OutDir::open(&d.path().join("real/inner"), true).unwrap();
    }

    #[test]
    fn a_missing_or_non_directory_output_is_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            OutDir::open(&d.path().join("nope"), true),
            Err(PathError::Missing { .. })
        ));
        std::fs::write(d.path().join("f"), "x").unwrap();
        assert!(matches!(
            OutDir::open(&d.path().join("f"), true),
            Err(PathError::NotADirectory { .. })
        ));
    }

    #[test]
    fn targets_are_checked_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let out = OutDir::open(d.path(), true).unwrap();
        let r = |s| RelPath::parse(s).unwrap();
        assert_eq!(out.check_target(&r("new")).unwrap(), TargetState::Absent);
        assert_eq!(
            out.check_target(&r("sub/new")).unwrap(),
            TargetState::Absent
        );
        std::fs::write(d.path().join("f"), "x").unwrap();
        assert_eq!(out.check_target(&r("f")).unwrap(), TargetState::Regular);
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("l")).unwrap();
        assert!(matches!(
            out.check_target(&r("l")),
            Err(PathError::Symlink { .. })
        ));
        std::os::unix::fs::symlink("/tmp", d.path().join("ldir")).unwrap();
        assert!(matches!(
            out.check_target(&r("ldir/x")),
            Err(PathError::Symlink { .. })
        ));
        std::fs::create_dir(d.path().join("dir")).unwrap();
        assert!(matches!(
            out.check_target(&r("dir")),
            Err(PathError::NotARegularFile { .. })
        ));
        assert!(matches!(
            out.check_target(&r("f/x")),
            Err(PathError::NotADirectory { .. })
        ));
    }
}

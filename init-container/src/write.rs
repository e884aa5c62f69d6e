//! Writing every file, atomically and all-or-nothing.
//!
//! For each file: a temporary file in the same directory (`O_CREAT|O_EXCL|O_NOFOLLOW`),
//! `write`, `fchmod`, `fchown` (with `--owner`), `fsync`, and only once every file is
//! prepared, the renames. A file whose content, mode (and owner, with `--owner`) already
//! match is not touched at all, so its inode and mtime stay the same on a re-run.
//!
//! A file that already exists is replaced with `renameat2(RENAME_EXCHANGE)`, which leaves
//! the old content under the temporary name until the whole set is committed; a new file is
//! renamed with `RENAME_NOREPLACE`. If any step fails, every rename is undone (the old
//! content swapped back, new files removed), temporary files and the directories this run
//! created are removed, and the directory is as it was. Where the filesystem lacks
//! `renameat2` flags, a hard link keeps the old content instead.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use zeroize::Zeroizing;

use crate::exit::{ExitCode, HasExitCode};
use crate::paths::{OutDir, PathError, RelPath, io_err, open_dir};

/// Mode of directories this run creates (before the umask).
const DIR_MODE: u32 = 0o755;

/// A uid and gid for `fchown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// One file to write. `Debug` shows the content's length, never the content.
pub struct Item<'a> {
    /// The directory it goes in.
    pub dir: &'a OutDir,
    /// Its path there.
    pub rel: &'a RelPath,
    /// The bytes (a secret: never logged).
    pub content: &'a [u8],
    /// Permission bits.
    pub mode: u32,
}

impl std::fmt::Debug for Item<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("dir", &self.dir.path())
            .field("rel", &self.rel)
            .field("content_len", &self.content.len())
            .field("mode", &format_args!("{:04o}", self.mode))
            .finish()
    }
}

/// What a successful write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Files created or replaced.
    pub written: usize,
    /// Files already up to date, left untouched.
    pub unchanged: usize,
}

/// A write failed; everything was rolled back.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The target or a directory on its way is not usable (a symlink, not a directory).
    #[error(transparent)]
    Path(#[from] PathError),
    /// The target appeared while this run was writing.
    #[error("{path}: created by someone else during this run; not replacing it")]
    Raced {
        /// The target.
        path: PathBuf,
    },
}

impl HasExitCode for WriteError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::Io
    }
}

/// Writes every item, or none of them.
///
/// # Errors
/// The first failure, after the rollback.
pub fn write_all(items: &[Item<'_>], owner: Option<Owner>) -> Result<Report, WriteError> {
    let mut tx = Tx::default();
    let r = tx.run(items, owner);
    match r {
        Ok(report) => {
            tx.finish();
            Ok(report)
        }
        Err(e) => {
            tx.rollback();
            Err(e)
        }
    }
}

/// A directory descriptor this transaction holds, keyed by where it is.
struct Parent {
    key: (usize, Vec<String>),
    fd: OwnedFd,
    shown: PathBuf,
    touched: bool,
}

struct Prepared {
    parent: usize,
    name: String,
    tmp: String,
    shown: PathBuf,
    existed: bool,
}

enum Committed {
    /// A new file: undo by unlinking it.
    New { parent: usize, name: String },
    /// Exchanged with an existing file: the old content is under `tmp`.
    Exchanged {
        parent: usize,
        name: String,
        tmp: String,
    },
    /// Replaced after hard-linking the old file to `backup`.
    Backup {
        parent: usize,
        name: String,
        backup: String,
    },
}

#[derive(Default)]
struct Tx {
    parents: Vec<Parent>,
    created_dirs: Vec<(usize, String)>,
    prepared: Vec<Prepared>,
    committed: Vec<Committed>,
    counter: u32,
}

enum Existing {
    Absent,
    Same,
    Different,
}

impl Tx {
    fn run(&mut self, items: &[Item<'_>], owner: Option<Owner>) -> Result<Report, WriteError> {
        let mut report = Report::default();
        for item in items {
            let parent = self.parent_for(item, owner)?;
            let shown = item.dir.shown(item.rel);
            let name = item.rel.file_name();
            let fd = self.parents[parent].fd.as_fd();
            let existed = match compare(fd, name, &shown, item.content, item.mode, owner)? {
                Existing::Same => {
                    report.unchanged += 1;
                    continue;
                }
                Existing::Absent => false,
                Existing::Different => true,
            };
            let tmp = self.write_temp(parent, item, owner)?;
            self.prepared.push(Prepared {
                parent,
                name: name.to_owned(),
                tmp,
                shown,
                existed,
            });
            report.written += 1;
        }
        let prepared = std::mem::take(&mut self.prepared);
        let mut rest = prepared.into_iter();
        while let Some(p) = rest.next() {
            if let Err(e) = self.commit(&p) {
                // Put the uncommitted ones back so the rollback removes their temp files.
                self.prepared.push(p);
                self.prepared.extend(rest);
                return Err(e);
            }
        }
        Ok(report)
    }

    /// The descriptor of `item`'s parent directory, creating missing directories.
    fn parent_for(&mut self, item: &Item<'_>, owner: Option<Owner>) -> Result<usize, WriteError> {
        let dir_key = std::ptr::from_ref(item.dir) as usize;
        let key = (dir_key, item.rel.parents().to_vec());
        if let Some(i) = self.parents.iter().position(|p| p.key == key) {
            return Ok(i);
        }
        // The output directory itself, held readable so it can be fsynced.
        let mut shown = item.dir.path().to_owned();
        let mut fd = open_dir(item.dir.fd(), OsStr::new("."), &shown, true)?;
        for name in item.rel.parents() {
            shown.push(name);
            let created =
                match rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_raw_mode(DIR_MODE)) {
                    Ok(()) => true,
                    Err(Errno::EXIST) => false,
                    Err(e) => return Err(io_err(shown, "mkdir", e).into()),
                };
            let next = open_dir(fd.as_fd(), OsStr::new(name), &shown, true)?;
            if created {
                // Recorded against a parent entry so the rollback can rmdir it.
                let idx = self.parents.len();
                self.parents.push(Parent {
                    key: (usize::MAX, Vec::new()),
                    fd,
                    shown: shown.parent().map(PathBuf::from).unwrap_or_default(),
                    touched: true,
                });
                self.created_dirs.push((idx, name.clone()));
                if let Some(o) = owner {
                    std::os::unix::fs::fchown(&next, Some(o.uid), Some(o.gid)).map_err(|e| {
                        PathError::Io {
                            path: shown.clone(),
                            op: "chown",
                            source: e,
                        }
                    })?;
                }
            }
            fd = next;
        }
        self.parents.push(Parent {
            key,
            fd,
            shown,
            touched: false,
        });
        Ok(self.parents.len() - 1)
    }

    fn write_temp(
        &mut self,
        parent: usize,
        item: &Item<'_>,
        owner: Option<Owner>,
    ) -> Result<String, WriteError> {
        let pid = std::process::id();
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir_shown = self.parents[parent].shown.clone();
        let (tmp, fd) = loop {
            self.counter += 1;
            let tmp = format!(".keyturn-{pid}-{}.tmp", self.counter);
            match rustix::fs::openat(
                &self.parents[parent].fd,
                tmp.as_str(),
                flags,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => break (tmp, fd),
                // A leftover of an earlier run with the same pid (pid 1 in every container).
                Err(Errno::EXIST) if self.counter < 10_000 => {}
                Err(e) => return Err(io_err(dir_shown.join(&tmp), "create", e).into()),
            }
        };
        self.parents[parent].touched = true;
        let shown = dir_shown.join(&tmp);
        let io = |op: &'static str| {
            let shown = shown.clone();
            move |e: std::io::Error| {
                WriteError::Path(PathError::Io {
                    path: shown,
                    op,
                    source: e,
                })
            }
        };
        // Record the temp before anything can fail, so the rollback removes it.
        self.prepared.push(Prepared {
            parent,
            name: String::new(),
            tmp: tmp.clone(),
            shown: shown.clone(),
            existed: false,
        });
        let mut f = File::from(fd);
        f.write_all(item.content).map_err(io("write"))?;
        f.set_permissions(std::fs::Permissions::from_mode(item.mode))
            .map_err(io("chmod"))?;
        if let Some(o) = owner {
            std::os::unix::fs::fchown(&f, Some(o.uid), Some(o.gid)).map_err(io("chown"))?;
        }
        f.sync_all().map_err(io("fsync"))?;
        self.prepared.pop();
        Ok(tmp)
    }

    fn commit(&mut self, p: &Prepared) -> Result<(), WriteError> {
        let fd = self.parents[p.parent].fd.as_fd();
        let (parent, name, tmp) = (p.parent, p.name.clone(), p.tmp.clone());
        if p.existed {
            match rustix::fs::renameat_with(
                fd,
                tmp.as_str(),
                fd,
                name.as_str(),
                RenameFlags::EXCHANGE,
            ) {
                Ok(()) => {
                    self.committed
                        .push(Committed::Exchanged { parent, name, tmp });
                    return Ok(());
                }
                Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) => {}
                Err(e) => return Err(io_err(p.shown.clone(), "rename", e).into()),
            }
            // No RENAME_EXCHANGE here: keep the old file under a second name first.
            let backup = format!("{tmp}.old");
            rustix::fs::linkat(fd, name.as_str(), fd, backup.as_str(), AtFlags::empty())
                .map_err(|e| io_err(p.shown.clone(), "link", e))?;
            if let Err(e) = rustix::fs::renameat(fd, tmp.as_str(), fd, name.as_str()) {
                let _ = rustix::fs::unlinkat(fd, backup.as_str(), AtFlags::empty());
                return Err(io_err(p.shown.clone(), "rename", e).into());
            }
            self.committed.push(Committed::Backup {
                parent,
                name,
                backup,
            });
            return Ok(());
        }
        match rustix::fs::renameat_with(fd, tmp.as_str(), fd, name.as_str(), RenameFlags::NOREPLACE)
        {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                return Err(WriteError::Raced {
                    path: p.shown.clone(),
                });
            }
            Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) => {
                // link(2) never replaces: the same guarantee as RENAME_NOREPLACE.
                match rustix::fs::linkat(fd, tmp.as_str(), fd, name.as_str(), AtFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        return Err(WriteError::Raced {
                            path: p.shown.clone(),
                        });
                    }
                    Err(e) => return Err(io_err(p.shown.clone(), "link", e).into()),
                }
                let _ = rustix::fs::unlinkat(fd, tmp.as_str(), AtFlags::empty());
            }
            Err(e) => return Err(io_err(p.shown.clone(), "rename", e).into()),
        }
        self.committed.push(Committed::New { parent, name });
        Ok(())
    }

    /// After success: drop the old contents and fsync the directories that changed.
    fn finish(&mut self) {
        for c in self.committed.drain(..) {
            let (parent, old) = match c {
                Committed::New { .. } => continue,
                Committed::Exchanged { parent, tmp, .. } => (parent, tmp),
                Committed::Backup { parent, backup, .. } => (parent, backup),
            };
            if let Err(e) =
                rustix::fs::unlinkat(&self.parents[parent].fd, old.as_str(), AtFlags::empty())
            {
                tracing::warn!(dir = %self.parents[parent].shown.display(), file = %old, error = %e, "cannot remove the replaced file");
            }
        }
        for p in self.parents.iter().filter(|p| p.touched) {
            if let Err(e) = rustix::fs::fsync(&p.fd) {
                tracing::warn!(dir = %p.shown.display(), error = %e, "fsync of the directory failed");
            }
        }
    }

    /// After a failure: undo every rename, remove temp files and created directories.
    fn rollback(&mut self) {
        while let Some(c) = self.committed.pop() {
            let r = match &c {
                Committed::New { parent, name } => {
                    rustix::fs::unlinkat(&self.parents[*parent].fd, name.as_str(), AtFlags::empty())
                }
                Committed::Exchanged { parent, name, tmp } => {
                    let fd = self.parents[*parent].fd.as_fd();
                    rustix::fs::renameat_with(
                        fd,
                        tmp.as_str(),
                        fd,
                        name.as_str(),
                        RenameFlags::EXCHANGE,
                    )
                    .and_then(|()| rustix::fs::unlinkat(fd, tmp.as_str(), AtFlags::empty()))
                }
                Committed::Backup {
                    parent,
                    name,
                    backup,
                } => {
                    let fd = self.parents[*parent].fd.as_fd();
                    rustix::fs::renameat(fd, backup.as_str(), fd, name.as_str())
                }
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "rollback step failed; the output directory may hold a partial update");
            }
        }
        for p in self.prepared.drain(..) {
            let _ =
                rustix::fs::unlinkat(&self.parents[p.parent].fd, p.tmp.as_str(), AtFlags::empty());
        }
        for (parent, name) in self.created_dirs.drain(..).rev() {
            let _ =
                rustix::fs::unlinkat(&self.parents[parent].fd, name.as_str(), AtFlags::REMOVEDIR);
        }
    }
}

/// Compares what is at `name` with what would be written, without following a symlink.
fn compare(
    dir: BorrowedFd<'_>,
    name: &str,
    shown: &std::path::Path,
    content: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<Existing, WriteError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Existing::Absent),
        Err(Errno::LOOP) => {
            return Err(PathError::Symlink {
                path: shown.to_owned(),
            }
            .into());
        }
        Err(Errno::ISDIR) => {
            return Err(PathError::NotARegularFile {
                path: shown.to_owned(),
            }
            .into());
        }
        Err(e) => return Err(io_err(shown.to_owned(), "open", e).into()),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err(shown.to_owned(), "stat", e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(PathError::NotARegularFile {
            path: shown.to_owned(),
        }
        .into());
    }
    let same_meta = u64::try_from(st.st_size).ok() == Some(content.len() as u64)
        && st.st_mode & 0o7777 == mode
        && owner.is_none_or(|o| st.st_uid == o.uid && st.st_gid == o.gid);
    if !same_meta {
        return Ok(Existing::Different);
    }
    let mut buf = Zeroizing::new(vec![0u8; content.len()]);
    let mut f = File::from(fd);
    let n = f.read(&mut buf[..]).map_err(|e| PathError::Io {
        path: shown.to_owned(),
        op: "read",
        source: e,
    })?;
    let mut total = n;
    while total < buf.len() {
        let n = f.read(&mut buf[total..]).map_err(|e| PathError::Io {
            path: shown.to_owned(),
            op: "read",
            source: e,
        })?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(if total == content.len() && buf[..] == *content {
        Existing::Same
    } else {
        Existing::Different
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn setup() -> (tempfile::TempDir, OutDir) {
        let d = tempfile::tempdir().unwrap();
        let out = OutDir::open(d.path(), true).unwrap();
        (d, out)
    }

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    fn entries(d: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = walk(d, d);
        v.sort();
        v
    }

    fn walk(root: &std::path::Path, d: &std::path::Path) -> Vec<String> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            v.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                v.extend(walk(root, &p));
            }
        }
        v
    }

    #[test]
    fn an_item_debug_print_shows_no_content() {
        let (_d, out) = setup();
        let r = rel("token");
        let item = Item {
            dir: &out,
            rel: &r,
            content: b"s.hunter2",
            mode: 0o400,
        };
        let shown = format!("{item:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("104, 117"), "{shown}"); // the bytes as a list
        assert!(shown.contains("content_len: 9"), "{shown}");
    }

    #[test]
    fn writes_files_with_the_requested_mode_and_nested_directories() {
        let (d, out) = setup();
        let (a, b) = (rel("a.env"), rel("sub/dir/b.json"));
        let items = [
            Item {
                dir: &out,
                rel: &a,
                content: b"A=1\n",
                mode: 0o400,
            },
            Item {
                dir: &out,
                rel: &b,
                content: b"{}",
                mode: 0o440,
            },
        ];
        let r = write_all(&items, None).unwrap();
        assert_eq!(
            r,
            Report {
                written: 2,
                unchanged: 0
            }
        );
        assert_eq!(std::fs::read(d.path().join("a.env")).unwrap(), b"A=1\n");
        let m = std::fs::metadata(d.path().join("sub/dir/b.json")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o440);
        assert_eq!(
            entries(d.path()),
            ["a.env", "sub", "sub/dir", "sub/dir/b.json"]
        );
    }

    #[test]
    fn unchanged_files_keep_their_inode_and_mtime() {
        let (d, out) = setup();
        let a = rel("a");
        let items = [Item {
            dir: &out,
            rel: &a,
            content: b"same",
            mode: 0o400,
        }];
        write_all(&items, None).unwrap();
        let before = std::fs::metadata(d.path().join("a")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let r = write_all(&items, None).unwrap();
        assert_eq!(
            r,
            Report {
                written: 0,
                unchanged: 1
            }
        );
        let after = std::fs::metadata(d.path().join("a")).unwrap();
        assert_eq!(
            (before.ino(), before.mtime_nsec()),
            (after.ino(), after.mtime_nsec())
        );
    }

    #[test]
    fn a_changed_file_is_replaced_and_a_changed_mode_counts_as_a_change() {
        let (d, out) = setup();
        let a = rel("a");
        write_all(
            &[Item {
                dir: &out,
                rel: &a,
                content: b"one",
                mode: 0o400,
            }],
            None,
        )
        .unwrap();
        write_all(
            &[Item {
                dir: &out,
                rel: &a,
                content: b"two",
                mode: 0o400,
            }],
            None,
        )
        .unwrap();
        assert_eq!(std::fs::read(d.path().join("a")).unwrap(), b"two");
        let r = write_all(
            &[Item {
                dir: &out,
                rel: &a,
                content: b"two",
                mode: 0o440,
            }],
            None,
        )
        .unwrap();
        assert_eq!(r.written, 1);
        assert_eq!(
            std::fs::metadata(d.path().join("a")).unwrap().mode() & 0o777,
            0o440
        );
        assert_eq!(entries(d.path()), ["a"]);
    }

    #[test]
    fn a_failure_restores_replaced_files_and_removes_new_ones_and_new_directories() {
        let (d, out) = setup();
        std::fs::write(d.path().join("old"), "old content").unwrap();
        let before = entries(d.path());
        // The last target is a non-empty directory, so its rename fails after the others
        // have been committed.
        std::fs::create_dir(d.path().join("blocker")).unwrap();
        std::fs::write(d.path().join("blocker/keep"), "x").unwrap();
        let (old, new, nested, blocker) = (rel("old"), rel("new"), rel("n/e/w"), rel("blocker"));
        let items = [
            Item {
                dir: &out,
                rel: &old,
                content: b"new content",
                mode: 0o400,
            },
            Item {
                dir: &out,
                rel: &new,
                content: b"fresh",
                mode: 0o400,
            },
            Item {
                dir: &out,
                rel: &nested,
                content: b"fresh",
                mode: 0o400,
            },
            Item {
                dir: &out,
                rel: &blocker,
                content: b"x",
                mode: 0o400,
            },
        ];
        let e = write_all(&items, None).unwrap_err();
        assert!(e.to_string().contains("blocker"), "{e}");
        assert_eq!(
            std::fs::read_to_string(d.path().join("old")).unwrap(),
            "old content"
        );
        let mut want = before.clone();
        want.extend(["blocker".to_owned(), "blocker/keep".to_owned()]);
        want.sort();
        assert_eq!(entries(d.path()), want);
    }

    #[test]
    fn a_symlink_at_the_target_is_refused_and_not_followed() {
        let (d, out) = setup();
        let victim = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(victim.path(), "victim").unwrap();
        std::os::unix::fs::symlink(victim.path(), d.path().join("s")).unwrap();
        let s = rel("s");
        let e = write_all(
            &[Item {
                dir: &out,
                rel: &s,
                content: b"x",
                mode: 0o400,
            }],
            None,
        )
        .unwrap_err();
        assert!(
            matches!(e, WriteError::Path(PathError::Symlink { .. })),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(victim.path()).unwrap(), "victim");
    }

    #[test]
    fn owner_is_applied_when_given() {
        let (d, out) = setup();
        let a = rel("a");
        let me = Owner {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        };
        write_all(
            &[Item {
                dir: &out,
                rel: &a,
                content: b"x",
                mode: 0o400,
            }],
            Some(me),
        )
        .unwrap();
        let m = std::fs::metadata(d.path().join("a")).unwrap();
        assert_eq!((m.uid(), m.gid()), (me.uid, me.gid));
    }
}

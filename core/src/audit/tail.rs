//! Reading the end of a log file without reading all of it: the last lines, and a torn line
//! after them. Used to resume a chain, to continue from a previous file, and by
//! `keyturn audit tail`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The longest line accepted. keyturn's entries are a few hundred bytes; a line this long means
/// the file is not an audit log.
pub const MAX_LINE_LEN: usize = 1024 * 1024;

const CHUNK: usize = 64 * 1024;

/// Errors reading the end of a file.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A line is longer than [`MAX_LINE_LEN`].
    #[error("a line before byte offset {offset} is longer than {MAX_LINE_LEN} bytes")]
    LineTooLong {
        /// Where the search gave up.
        offset: u64,
    },
}

/// A complete line: its bytes without the `\n`, and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailLine {
    /// Byte offset of its first byte.
    pub offset: u64,
    /// Its bytes, without the newline.
    pub bytes: Vec<u8>,
}

/// The end of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTail {
    /// Up to the requested number of complete lines, oldest first.
    pub lines: Vec<TailLine>,
    /// Where bytes after the last newline start, if there are any: a line torn by a crash (or
    /// still being written).
    pub torn_at: Option<u64>,
    /// The file's length when read.
    pub len: u64,
}

/// Reads the last `n` complete lines of `file` (and notes a torn line after them), reading
/// backwards from the end in chunks.
///
/// # Errors
/// [`TailError::Io`], or [`TailError::LineTooLong`] when no newline turns up for
/// [`MAX_LINE_LEN`] bytes.
pub fn read_tail(file: &File, n: usize) -> Result<FileTail, TailError> {
    let len = file.metadata()?.len();
    // Chunks read so far, last first; together they cover [pos, len).
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut pos = len;
    let mut newlines = 0usize;
    let mut since_newline = 0usize;
    while pos > 0 && newlines < n.saturating_add(1) {
        let size = CHUNK.min(usize::try_from(pos).unwrap_or(CHUNK));
        pos -= size as u64;
        let mut chunk = vec![0u8; size];
        file.read_exact_at(&mut chunk, pos)?;
        for (i, b) in chunk.iter().enumerate().rev() {
            if *b == b'\n' {
                newlines += 1;
                since_newline = 0;
            } else {
                since_newline += 1;
                if since_newline > MAX_LINE_LEN {
                    return Err(TailError::LineTooLong {
                        offset: pos + i as u64,
                    });
                }
            }
        }
        chunks.push(chunk);
    }
    let data: Vec<u8> = chunks.into_iter().rev().flatten().collect();

    let mut lines = Vec::new();
    let mut start = 0usize;
    let mut first = true;
    for nl in memchr::memchr_iter(b'\n', &data) {
        // Unless we read from the very start, the first segment is the end of an earlier line.
        if !(first && pos > 0) {
            lines.push(TailLine {
                offset: pos + start as u64,
                bytes: data[start..nl].to_vec(),
            });
        }
        first = false;
        start = nl + 1;
    }
    // The loop stops short of the start only after finding a newline, so `start` is past the
    // partial first segment whenever `pos > 0`.
    let torn_at = (start < data.len()).then_some(pos + start as u64);
    let skip = lines.len().saturating_sub(n);
    lines.drain(..skip);
    Ok(FileTail {
        lines,
        torn_at,
        len,
    })
}

/// The first line of `file`, without its newline, if it has a complete one.
///
/// # Errors
/// When reading fails.
pub fn read_first_line(file: &File) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let got = file.read_at(&mut chunk, buf.len() as u64)?;
        if got == 0 {
            return Ok(None);
        }
        if let Some(i) = memchr::memchr(b'\n', &chunk[..got]) {
            buf.extend_from_slice(&chunk[..i]);
            return Ok(Some(buf));
        }
        buf.extend_from_slice(&chunk[..got]);
        if buf.len() > MAX_LINE_LEN {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(content: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(content).unwrap();
        f
    }

    fn texts(t: &FileTail) -> Vec<String> {
        t.lines
            .iter()
            .map(|l| String::from_utf8(l.bytes.clone()).unwrap())
            .collect()
    }

    #[test]
    fn the_last_lines_come_back_oldest_first_with_their_offsets() {
        let f = file_with(b"a\nbb\nccc\n");
        let t = read_tail(&f, 2).unwrap();
        assert_eq!(texts(&t), ["bb", "ccc"]);
        assert_eq!(t.lines[0].offset, 2);
        assert_eq!(t.torn_at, None);
        let all = read_tail(&f, 10).unwrap();
        assert_eq!(texts(&all), ["a", "bb", "ccc"]);
    }

    #[test]
    fn a_torn_last_line_is_reported_not_returned() {
        let f = file_with(b"a\nbb\ncc");
        let t = read_tail(&f, 1).unwrap();
        assert_eq!(texts(&t), ["bb"]);
        assert_eq!(t.torn_at, Some(5));
        let only_torn = read_tail(&file_with(b"abc"), 1).unwrap();
        assert!(only_torn.lines.is_empty());
        assert_eq!(only_torn.torn_at, Some(0));
    }

    #[test]
    fn lines_spanning_many_chunks_are_put_together() {
        let long = "x".repeat(3 * CHUNK + 17);
        let f = file_with(format!("first\n{long}\nlast\n").as_bytes());
        let t = read_tail(&f, 2).unwrap();
        assert_eq!(texts(&t), [long, "last".to_owned()]);
        assert_eq!(read_first_line(&f).unwrap().unwrap(), b"first");
    }

    #[test]
    fn an_empty_file_has_no_lines() {
        let t = read_tail(&file_with(b""), 3).unwrap();
        assert!(t.lines.is_empty());
        assert_eq!(t.torn_at, None);
        assert_eq!(read_first_line(&file_with(b"")).unwrap(), None);
    }
}

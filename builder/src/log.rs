//! Build logs: stored bzip2-compressed where Nix stores them
//! (`<log dir>/<first two characters of the .drv base name>/<the rest>.bz2`, so
//! `nix-store -l` finds them), split into lines for the event stream, with terminal escape
//! sequences filtered from what is displayed, and the last lines kept for error messages.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use arca_store_core::StorePath;

/// How many trailing lines a failure message quotes (Nix's `log-lines` default).
pub const TAIL_LINES: usize = 10;

/// Where the log of `drv` is stored under `log_dir`.
pub fn log_path(log_dir: &Path, drv: &StorePath) -> PathBuf {
    let base = drv.as_str();
    log_dir.join(&base[..2]).join(format!("{}.bz2", &base[2..]))
}

/// Reads a stored log back (decompressed).
pub fn read_log(log_dir: &Path, drv: &StorePath) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    open_log(log_dir, drv)?.read_to_end(&mut text)?;
    Ok(text)
}

/// Opens a stored log for reading (decompressed as it is read); `NotFound` when `drv`
/// has none.
pub fn open_log(log_dir: &Path, drv: &StorePath) -> io::Result<Box<dyn Read + Send>> {
    let file = File::open(log_path(log_dir, drv))?;
    Ok(Box::new(bzip2::read::MultiBzDecoder::new(file)))
}

/// The sink for one build's output: writes it (uncompressed) to a temporary file beside
/// the log, cuts lines for `on_line`, and remembers the last [`TAIL_LINES`] lines. The
/// compression happens in [`PendingLog::complete`], off the build's critical path.
pub(crate) struct LogSink<'a> {
    file: Option<(io::BufWriter<File>, PathBuf, PathBuf)>,
    lines: Lines,
    tail: VecDeque<String>,
    on_line: &'a mut dyn FnMut(String),
}

impl<'a> LogSink<'a> {
    /// A sink for the log of `drv` under `log_dir` (a reader never sees half a log: the
    /// stored one appears by rename).
    ///
    /// The raw log is written in `raw_dir` (the build directories' parent): off the
    /// store's file system, whose journal the group commit keeps busy.
    pub fn create(
        log_dir: &Path,
        drv: &StorePath,
        raw_dir: &Path,
        on_line: &'a mut dyn FnMut(String),
    ) -> io::Result<LogSink<'a>> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = log_path(log_dir, drv);
        let temporary = raw_dir.join(format!(
            "arca-log-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            drv.hash_part()
        ));
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        Ok(LogSink {
            file: Some((io::BufWriter::new(file), temporary, path)),
            lines: Lines::default(),
            tail: VecDeque::with_capacity(TAIL_LINES + 1),
            on_line,
        })
    }

    /// Adds a line of Arca's own to the stored log only: the error that ended the build,
    /// which the caller reports itself (shown once, not also as a log line).
    pub fn record(&mut self, message: &str) {
        if let Some((writer, _, _)) = &mut self.file {
            let separator = if self.lines.partial.is_empty() {
                ""
            } else {
                "\n"
            };
            let _ = writeln!(writer, "{separator}{message}");
        }
    }

    /// Adds a line of Arca's own (a post-build note) to the log and the displayed lines.
    pub fn note(&mut self, message: &str) {
        let separator = if self.lines.partial.is_empty() {
            ""
        } else {
            "\n"
        };
        let _ = self.write_all(format!("{separator}{message}\n").as_bytes());
    }

    /// The last lines, oldest first, including an unfinished last line (a builder's
    /// last words often lack their newline).
    pub fn tail(&self) -> Vec<String> {
        let mut tail: Vec<String> = self.tail.iter().cloned().collect();
        if !self.lines.partial.is_empty() {
            if tail.len() == TAIL_LINES {
                tail.remove(0);
            }
            tail.push(filter_escapes(&self.lines.partial));
        }
        tail
    }

    /// Passes on the last partial line and closes the raw log; [`PendingLog::complete`]
    /// (or dropping it) stores it compressed.
    pub fn finish(mut self) -> io::Result<PendingLog> {
        if let Some(line) = self.lines.take_partial() {
            self.line(&line);
        }
        let (writer, raw, path) = self.file.take().expect("finish is called once");
        writer
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        Ok(PendingLog {
            raw: Some(raw),
            path,
        })
    }

    /// Removes the raw log: the build never ran (it started early and an input failed).
    pub fn discard(mut self) {
        if let Some((writer, raw, _)) = self.file.take() {
            drop(writer);
            let _ = fs::remove_file(raw);
        }
    }

    fn line(&mut self, raw: &[u8]) {
        let line = filter_escapes(raw);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        (self.on_line)(line);
    }
}

/// A finished build's raw log, to be compressed into place.
pub(crate) struct PendingLog {
    raw: Option<PathBuf>,
    path: PathBuf,
}

impl PendingLog {
    /// Compresses the raw log into `<log>.bz2` (by rename, so readers never see half a
    /// log) and removes the raw file. Not flushed to disk: a log lost in a power cut
    /// costs nothing, and Nix does not sync its logs either.
    pub fn complete(mut self) -> io::Result<PathBuf> {
        let raw = self.raw.take().expect("completed once");
        let result = compress(&raw, &self.path);
        let _ = fs::remove_file(&raw);
        result.map(|()| self.path.clone())
    }
}

impl PendingLog {
    /// Removes the raw log without storing it.
    pub fn discard(mut self) {
        if let Some(raw) = self.raw.take() {
            let _ = fs::remove_file(&raw);
        }
    }
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            let _ = compress(&raw, &self.path);
            let _ = fs::remove_file(&raw);
        }
    }
}

fn compress(raw: &Path, path: &Path) -> io::Result<()> {
    store_compressed(&mut File::open(raw)?, path)
}

/// Stores the log of `drv` under `log_dir` from `text` (uncompressed, streamed: a log is
/// never held in memory), replacing any earlier one by rename: what Nix's `addBuildLog`
/// does for `nix store copy-log` and the daemon's `AddBuildLog`.
pub fn write_log(log_dir: &Path, drv: &StorePath, text: &mut dyn Read) -> io::Result<()> {
    store_compressed(text, &log_path(log_dir, drv))
}

/// The bzip2 stream of no bytes at level 1, as the encoder writes it: the header `BZh1`,
/// the end-of-stream magic and a zero CRC.
const EMPTY_BZIP2: &[u8] = b"BZh1\x17\x72\x45\x38\x50\x90\0\0\0\0";

fn store_compressed(input: &mut dyn Read, path: &Path) -> io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension(format!(
        "bz2.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // Level 1 (100 kB blocks): logs are text, and level 9's 900 kB blocks make starting
    // the encoder cost milliseconds. An empty log (a quiet builder's) is written as is:
    // the encoder's start alone zeroes a megabyte of tables.
    let written = File::create(&temporary).and_then(|mut file| {
        let mut first = [0u8; 8192];
        let n = loop {
            match input.read(&mut first) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            file.write_all(EMPTY_BZIP2)?;
        } else {
            let mut encoder = bzip2::write::BzEncoder::new(file, bzip2::Compression::fast());
            encoder.write_all(&first[..n])?;
            io::copy(input, &mut encoder)?;
            encoder.finish()?;
        }
        fs::rename(&temporary, path)
    });
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

impl Write for LogSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if let Some((writer, _, _)) = &mut self.file {
            writer.write_all(bytes)?;
        }
        let mut complete = Vec::new();
        self.lines.push(bytes, |line| complete.push(line));
        for line in complete {
            self.line(&line);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogSink<'_> {
    fn drop(&mut self) {
        if let Some((_, temporary, _)) = self.file.take() {
            let _ = fs::remove_file(temporary);
        }
    }
}

/// Cuts a byte stream into lines. A program printing one endless line must not grow
/// memory without bound: what is kept of a line is cut at 64 KiB (a stored log keeps
/// every byte; only what is displayed is cut).
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Passes each line `bytes` completes to `on_line`, without its newline.
    fn push(&mut self, bytes: &[u8], mut on_line: impl FnMut(Vec<u8>)) {
        let mut rest = bytes;
        while let Some(newline) = memchr_newline(rest) {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..newline]);
            on_line(line);
            rest = &rest[newline + 1..];
        }
        let room = (64 * 1024usize).saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&rest[..rest.len().min(room)]);
    }

    /// The unfinished last line, if any.
    fn take_partial(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

/// Output cut into lines for `on_line` (escape sequences filtered), for programs whose
/// output is only shown, not stored (the post-build hook).
pub(crate) struct LineSplitter<F: FnMut(String)> {
    lines: Lines,
    on_line: F,
}

impl<F: FnMut(String)> LineSplitter<F> {
    pub fn new(on_line: F) -> Self {
        LineSplitter {
            lines: Lines::default(),
            on_line,
        }
    }

    /// Passes on an unfinished last line.
    pub fn finish(mut self) {
        if let Some(line) = self.lines.take_partial() {
            (self.on_line)(filter_escapes(&line));
        }
    }
}

impl<F: FnMut(String)> Write for LineSplitter<F> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let on_line = &mut self.on_line;
        self.lines
            .push(bytes, |line| on_line(filter_escapes(&line)));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// What of a log line may reach a terminal: ANSI escape sequences (CSI `ESC [ ... final`,
/// OSC `ESC ] ... BEL/ST`, two-byte `ESC x`) and other control characters are dropped,
/// tabs become spaces up to the next multiple of 8, carriage returns are dropped (as
/// Nix does), invalid UTF-8 is replaced.
pub fn filter_escapes(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\t' => {
                let width = out.chars().count();
                out.extend(std::iter::repeat_n(' ', 8 - width % 8));
            }
            // Nix's filter drops carriage returns (a CRLF line stays whole).
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_log_is_the_stream_the_encoder_writes_and_reads_back_empty() {
        let mut encoder = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        encoder.flush().unwrap();
        assert_eq!(encoder.finish().unwrap(), EMPTY_BZIP2);
        let dir = tempfile::tempdir().unwrap();
        for text in [&b""[..], b"one line\n"] {
            let path = dir.path().join("log.bz2");
            store_compressed(&mut &text[..], &path).unwrap();
            let mut back = Vec::new();
            bzip2::read::BzDecoder::new(File::open(&path).unwrap())
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn escape_sequences_and_controls_are_filtered() {
        assert_eq!(filter_escapes(b"\x1b[1;31mred\x1b[0m text"), "red text");
        assert_eq!(filter_escapes(b"\x1b]0;title\x07after"), "after");
        assert_eq!(filter_escapes(b"\x1b]8;;http://x\x1b\\link"), "link");
        assert_eq!(filter_escapes(b"a\tb"), "a       b");
        assert_eq!(filter_escapes(b"dos line\r"), "dos line");
        assert_eq!(
            filter_escapes(b"bell\x07 and \x08backspace"),
            "bell and backspace"
        );
        assert_eq!(filter_escapes(b"\xff\xfeok"), "\u{fffd}\u{fffd}ok");
    }

    #[test]
    fn tail_includes_an_unfinished_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let drv = StorePath::from_base_name("vv6zc7aa5dmqwl4lhir98z10a6kd88hn-probe.drv").unwrap();
        let mut on_line = |_: String| {};
        let mut sink = LogSink::create(dir.path(), &drv, dir.path(), &mut on_line).unwrap();
        for i in 0..20 {
            writeln!(sink, "line {i}").unwrap();
        }
        sink.write_all(b"no newline").unwrap();
        let tail = sink.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.first().map(String::as_str), Some("line 11"));
        assert_eq!(tail.last().map(String::as_str), Some("no newline"));
    }

    #[test]
    fn log_round_trips_and_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let drv = StorePath::from_base_name("vv6zc7aa5dmqwl4lhir98z10a6kd88hn-probe.drv").unwrap();
        let mut lines = Vec::new();
        let mut on_line = |line: String| lines.push(line);
        let mut sink = LogSink::create(dir.path(), &drv, dir.path(), &mut on_line).unwrap();
        sink.write_all(b"one\ntw").unwrap();
        sink.write_all(b"o\nthree").unwrap();
        sink.note("note: kept");
        sink.record("error: it failed");
        let tail = sink.tail();
        let path = sink.finish().unwrap().complete().unwrap();
        assert_eq!(
            path,
            dir.path()
                .join("vv/6zc7aa5dmqwl4lhir98z10a6kd88hn-probe.drv.bz2")
        );
        assert_eq!(lines, ["one", "two", "three", "note: kept"]);
        assert_eq!(tail, lines);
        assert_eq!(
            read_log(dir.path(), &drv).unwrap(),
            b"one\ntwo\nthree\nnote: kept\nerror: it failed\n"
        );
    }
}

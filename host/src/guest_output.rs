//! Where a guest's stdout and stderr go ([`GuestStdio`]).
//!
//! With [`GuestStdio::Inherit`] (`hearth run`) they are the process's own,
//! written through as the guest writes them; otherwise each line a guest writes becomes one log event on the host, at target
//! `guest`, with fields `function` (the function's name) and `stream`
//! (`stdout` or `stderr`). Lines are split on `\n`; a line longer than
//! [`MAX_LINE`] is emitted in pieces; a trailing partial line is emitted
//! when the stream is dropped (the instance ends), so nothing is lost.
//!
//! When the function was given [`GuestOutputFiles`] (a containerd task's
//! stdio paths, so CRI log files and `kubectl logs` see them), each line is
//! written there instead, with its `\n`, by one writer thread per file: a
//! slow reader never blocks an instance. A file that cannot be opened is
//! reported once in hearthd's log and its lines go to the log instead.
//! Lines waiting for a slow reader hold at most [`MAX_QUEUED_BYTES`] per
//! file: past it a line is dropped and counted
//! ([`GuestOutputFiles::dropped_lines`], `/metrics`), so a guest printing
//! in a loop cannot grow hearthd's memory, and never waits itself.

use bytes::Bytes;
use std::io::{self, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line emitted as one event.
pub const MAX_LINE: usize = 16 * 1024;

/// Bytes of lines one output file may have waiting for its reader.
pub const MAX_QUEUED_BYTES: usize = 1 << 20;

/// Which of the guest's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStream {
    /// `wasi:cli/stdout`.
    Stdout,
    /// `wasi:cli/stderr`.
    Stderr,
}

impl GuestStream {
    fn name(self) -> &'static str {
        match self {
            GuestStream::Stdout => "stdout",
            GuestStream::Stderr => "stderr",
        }
    }
}

/// Where a function's stdio goes.
#[derive(Debug, Clone, Default)]
pub enum GuestStdio {
    /// stdout and stderr become lines of the host's log (hearthd's default
    /// for a function without files); stdin is empty.
    #[default]
    Log,
    /// stdout and stderr go to files (a Pod's), line by line; stdin is
    /// empty.
    Files(Arc<GuestOutputFiles>),
    /// The host process's own stdin, stdout and stderr, byte for byte, as
    /// `wasmtime run` and `wasmtime serve` give them (`hearth run`).
    Inherit,
}

impl GuestStdio {
    /// The files, when output goes to files.
    pub fn files(&self) -> Option<&Arc<GuestOutputFiles>> {
        match self {
            GuestStdio::Files(files) => Some(files),
            GuestStdio::Log | GuestStdio::Inherit => None,
        }
    }
}

/// Files a function's stdout and stderr are written to.
#[derive(Debug)]
pub struct GuestOutputFiles {
    stdout: Option<OutputFile>,
    stderr: Option<OutputFile>,
}

impl GuestOutputFiles {
    /// Writes stdout to `stdout` and stderr to `stderr` (either may be
    /// absent: that stream goes to the log). Files are opened for append by
    /// their writer threads, so opening a FIFO waits for its reader there.
    pub fn new(function: &str, stdout: Option<PathBuf>, stderr: Option<PathBuf>) -> Self {
        GuestOutputFiles {
            stdout: stdout.map(|path| OutputFile::spawn(function, path)),
            stderr: stderr.map(|path| OutputFile::spawn(function, path)),
        }
    }

    /// Lines dropped because their file's reader fell behind by more than
    /// [`MAX_QUEUED_BYTES`].
    pub fn dropped_lines(&self) -> u64 {
        [&self.stdout, &self.stderr]
            .into_iter()
            .flatten()
            .map(|file| file.dropped.load(Ordering::Relaxed))
            .sum()
    }

    /// Queues `line` (ending in `\n`) for `stream`'s file, as a guest's
    /// own output is; `Err(line)` when that stream has no file or its
    /// writer is gone.
    pub(crate) fn write_line(&self, stream: GuestStream, line: Vec<u8>) -> Result<(), Vec<u8>> {
        match self.for_stream(stream) {
            Some(file) => file.send(line),
            None => Err(line),
        }
    }

    fn for_stream(&self, stream: GuestStream) -> Option<&OutputFile> {
        match stream {
            GuestStream::Stdout => self.stdout.as_ref(),
            GuestStream::Stderr => self.stderr.as_ref(),
        }
    }
}

/// One output file and the thread that writes lines to it; the thread ends
/// (closing the file) once every sender is gone.
#[derive(Debug)]
struct OutputFile {
    lines: mpsc::Sender<Vec<u8>>,
    /// Bytes sent and not yet written.
    queued: Arc<AtomicUsize>,
    /// Lines dropped because `queued` was full.
    dropped: AtomicU64,
}

impl OutputFile {
    /// Queues `line` for the writer thread; `Err(line)` if the thread is
    /// gone. A line that would take the queue past [`MAX_QUEUED_BYTES`] is
    /// dropped and counted (`Ok`).
    fn send(&self, line: Vec<u8>) -> Result<(), Vec<u8>> {
        let size = line.len();
        let reserved = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |queued| {
                (queued + size <= MAX_QUEUED_BYTES).then_some(queued + size)
            });
        if reserved.is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.lines.send(line).map_err(|mpsc::SendError(line)| {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            line
        })
    }

    fn spawn(function: &str, path: PathBuf) -> Self {
        let (lines, received) = mpsc::channel::<Vec<u8>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let written_queue = queued.clone();
        let function = function.to_string();
        let spawned = std::thread::Builder::new()
            .name("guest-output".into())
            .spawn(move || {
                let opened = std::fs::OpenOptions::new().append(true).open(&path);
                let mut file = match opened {
                    Ok(file) => Some(file),
                    Err(error) => {
                        tracing::warn!(%function, path = %path.display(), "cannot open the output file; guest output goes to the log: {error}");
                        None
                    }
                };
                for line in received {
                    written_queue.fetch_sub(line.len(), Ordering::Relaxed);
                    let written = file.as_mut().map(|file| file.write_all(&line));
                    if !matches!(written, Some(Ok(()))) {
                        if let Some(Err(error)) = written {
                            tracing::warn!(%function, path = %path.display(), "writing guest output failed; further output goes to the log: {error}");
                            file = None;
                        }
                        let text = String::from_utf8_lossy(&line);
                        tracing::info!(target: "guest", %function, "{}", text.trim_end());
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!("cannot start a guest output thread: {error}");
        }
        OutputFile {
            lines,
            queued,
            dropped: AtomicU64::new(0),
        }
    }
}

/// A [`StdoutStream`] that turns guest output into host log lines, or into
/// lines of an output file.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    function: Arc<str>,
    stream: GuestStream,
    files: Option<Arc<GuestOutputFiles>>,
}

impl GuestOutput {
    /// Output of `function` on `stream`, to `files` when given.
    pub fn new(
        function: Arc<str>,
        stream: GuestStream,
        files: Option<Arc<GuestOutputFiles>>,
    ) -> Self {
        GuestOutput {
            function,
            stream,
            files,
        }
    }

    fn writer(&self) -> LineWriter {
        LineWriter {
            output: self.clone(),
            pending: Vec::new(),
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }
}

struct LineWriter {
    output: GuestOutput,
    pending: Vec<u8>,
}

impl LineWriter {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&bytes[..newline]);
            self.emit();
            bytes = &bytes[newline + 1..];
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            self.emit();
            self.pending = rest;
        }
    }

    fn emit(&mut self) {
        if let Some(file) =
            (self.output.files.as_ref()).and_then(|f| f.for_stream(self.output.stream))
        {
            let mut line = std::mem::take(&mut self.pending);
            line.push(b'\n');
            match file.send(line) {
                Ok(()) => return,
                // The writer thread is gone: log the line instead.
                Err(mut line) => {
                    line.pop();
                    self.pending = line;
                }
            }
        }
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        tracing::info!(
            target: "guest",
            function = %self.output.function,
            stream = self.output.stream.name(),
            "{line}"
        );
        self.pending.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_reader_that_falls_behind_loses_counted_lines_not_memory() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let files = Arc::new(GuestOutputFiles::new("chatty", Some(fifo.clone()), None));
        let output = GuestOutput::new("chatty".into(), GuestStream::Stdout, Some(files.clone()));
        let mut writer = output.writer();
        // 2 MiB of 1 KiB lines while nobody reads the FIFO (its writer
        // thread waits in `open` for a reader): half of them fit.
        let line = [b'x'; 1023];
        for _ in 0..2048 {
            writer.push(&line);
            writer.push(b"\n");
        }
        let fits = MAX_QUEUED_BYTES / 1024;
        assert_eq!(files.dropped_lines(), (2048 - fits) as u64);
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            std::fs::File::open(&fifo)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            text
        });
        drop((writer, output, files));
        let text = reader.join().unwrap();
        assert_eq!(text.lines().count(), fits, "every queued line arrives");
        assert!(text.lines().all(|l| l.len() == 1023));
    }
}

//! Log writers for the access log and the JSON decision log. Lines are handed to a
//! background thread over a bounded channel so that the request path never waits on disk
//! unless the disk falls behind by thousands of lines (then it waits rather than drop).
//! `reopen()` implements the logrotate convention (SIGUSR1).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use crate::config::LogTarget;

const QUEUE: usize = 16 * 1024;

enum Msg {
    Line(String),
    Reopen,
    Flush(SyncSender<()>),
}

/// A log destination. Cloning shares the writer thread.
#[derive(Clone)]
pub struct LogSink {
    tx: Option<SyncSender<Msg>>,
    name: Arc<str>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open {name} log {path}: {source}")]
pub struct SinkError {
    pub name: String,
    pub path: PathBuf,
    pub source: io::Error,
}

enum Out {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>, PathBuf),
}

impl Out {
    fn w(&mut self) -> &mut dyn Write {
        match self {
            Out::Stdout(w) => w,
            Out::File(w, _) => w,
        }
    }
}

fn open(path: &PathBuf) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogSink {
    /// A sink that discards everything.
    pub fn off(name: &str) -> LogSink {
        LogSink {
            tx: None,
            name: name.into(),
        }
    }

    /// Open the target now (so a bad path fails at start-up) and start its writer thread.
    pub fn open(name: &str, target: &LogTarget) -> Result<LogSink, SinkError> {
        let out = match target {
            LogTarget::Off => return Ok(LogSink::off(name)),
            LogTarget::Stdout => Out::Stdout(BufWriter::new(io::stdout())),
            LogTarget::File(p) => {
                let f = open(p).map_err(|source| SinkError {
                    name: name.to_string(),
                    path: p.clone(),
                    source,
                })?;
                Out::File(BufWriter::new(f), p.clone())
            }
        };
        let (tx, rx) = sync_channel(QUEUE);
        let thread_name = format!("vigil-{name}-log");
        let n: Arc<str> = name.into();
        let n2 = n.clone();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || writer(rx, out, &n2))
            .map_err(|source| SinkError {
                name: name.to_string(),
                path: PathBuf::from("<thread>"),
                source,
            })?;
        Ok(LogSink {
            tx: Some(tx),
            name: n,
        })
    }

    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// Queue one line (without its newline).
    pub fn write(&self, line: String) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            // The writer is behind: wait for room rather than lose a line.
            Err(TrySendError::Full(m)) => {
                let _ = tx.send(m);
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!(log = %self.name, "Log writer thread is gone; line lost.");
            }
        }
    }

    /// Reopen the file (after logrotate moved it).
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Reopen);
        }
    }

    /// Wait until every queued line is written and flushed.
    pub fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = sync_channel(1);
            if tx.send(Msg::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }
}

fn writer(rx: Receiver<Msg>, mut out: Out, name: &str) {
    let mut buf_msgs = Vec::new();
    while let Ok(first) = rx.recv() {
        buf_msgs.push(first);
        while let Ok(m) = rx.try_recv() {
            buf_msgs.push(m);
            if buf_msgs.len() >= 1024 {
                break;
            }
        }
        for m in buf_msgs.drain(..) {
            match m {
                Msg::Line(l) => {
                    let w = out.w();
                    if let Err(e) = w.write_all(l.as_bytes()).and_then(|_| w.write_all(b"\n")) {
                        tracing::error!(log = name, error = %e, "Cannot write log line.");
                    }
                }
                Msg::Reopen => {
                    let _ = out.w().flush();
                    if let Out::File(_, path) = &out {
                        let path = path.clone();
                        match open(&path) {
                            Ok(f) => {
                                tracing::info!(log = name, path = %path.display(), "Log file reopened.");
                                out = Out::File(BufWriter::new(f), path);
                            }
                            Err(e) => {
                                tracing::error!(log = name, path = %path.display(), error = %e, "Cannot reopen log file; still writing to the old one.")
                            }
                        }
                    }
                }
                Msg::Flush(done) => {
                    let _ = out.w().flush();
                    let _ = done.send(());
                }
            }
        }
        if let Err(e) = out.w().flush() {
            tracing::error!(log = name, error = %e, "Cannot flush log.");
        }
    }
    let _ = out.w().flush();
}

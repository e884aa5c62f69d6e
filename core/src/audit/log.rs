//! The audit log: numbers, chains and writes events, with group commit, failing closed.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::{mpsc, oneshot};

use super::anchor::AnchorHead;
use super::chain::{ChainHash, ChainHead, ChainKey, seal_into};
use super::error::AuditError;
use super::event::{Actor, Event, EventBuilder};
use super::hmac_key::HmacKey;
use super::sink::{AuditSink, FileSink, SinkError, StdoutSink};

/// The most events one batch (one write and one `fdatasync` per sink) takes by default.
pub const DEFAULT_MAX_BATCH: usize = 4096;

/// What [`AuditLog::open`] opens.
#[derive(Debug)]
pub struct AuditLogOptions {
    key: HmacKey,
    sinks: Vec<SinkSpec>,
    continue_from: Option<PathBuf>,
    max_batch: usize,
}

#[derive(Debug)]
enum SinkSpec {
    File(PathBuf),
    Stdout,
    Custom(Box<dyn AuditSink>),
}

impl AuditLogOptions {
    /// Options with the audit HMAC key and no sinks yet.
    #[must_use]
    pub fn new(key: HmacKey) -> Self {
        Self {
            key,
            sinks: Vec::new(),
            continue_from: None,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }

    /// Adds a [`FileSink`] at `path`.
    #[must_use]
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.sinks.push(SinkSpec::File(path.into()));
        self
    }

    /// Adds a [`StdoutSink`].
    #[must_use]
    pub fn stdout(mut self) -> Self {
        self.sinks.push(SinkSpec::Stdout);
        self
    }

    /// Adds a sink of another kind.
    #[must_use]
    pub fn sink(mut self, sink: Box<dyn AuditSink>) -> Self {
        self.sinks.push(SinkSpec::Custom(sink));
        self
    }

    /// When no sink holds a chain yet (a new file), start from the last entry of this previous
    /// file instead of from scratch: the first new entry gets its `seq + 1` and its `hash` as
    /// `prev`. Ignored when a file sink already holds events, since it carries on from its own.
    #[must_use]
    pub fn continue_from(mut self, previous: impl Into<PathBuf>) -> Self {
        self.continue_from = Some(previous.into());
        self
    }

    /// The most events written with one write and one sync. At least 1.
    #[must_use]
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }
}

/// What [`AuditLog::record`] returns once an event is durable on every sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The event's position in the chain.
    pub seq: u64,
    /// The time written in the entry (milliseconds).
    pub time: DateTime<Utc>,
    /// The entry's hash, which the next entry carries as `prev`.
    pub hash: ChainHash,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditStats {
    /// Events recorded (durable on every sink).
    pub events: u64,
    /// Batches written.
    pub batches: u64,
    /// Batches whose write failed (at most 1: the log is poisoned after the first).
    pub write_failures: u64,
}

/// The audit log: a handle to one writer thread that owns the sinks.
///
/// # Fail closed
///
/// [`record`](AuditLog::record) returns `Ok` only once the event's line is written and synced
/// on every sink. So record *first*, then perform the access, and let `?` stop it:
///
/// ```no_run
/// # use keyturn_core::audit::*;
/// # use keyturn_core::SecretValue;
/// # async fn f(log: &AuditLog, value: SecretValue) -> Result<(), AuditError> {
/// let event = log
///     .event(Actor::service_account("shop", "orders-api"), "secret.read", "secret/data/orders/db")
///     .value(&value)
///     .build();
/// log.record(event).await?; // no audit, no access
/// std::fs::write("/run/secrets/db", value.expose()).unwrap();
/// # Ok(()) }
/// ```
///
/// **After a failed write the log is poisoned:** the batch's callers get
/// [`AuditError::Write`] and every later call [`AuditError::Poisoned`], until the process
/// restarts. The alternative — not counting the failed events and carrying on — is not sound:
/// a failed write may have left part of the batch on disk, a failed `fsync` leaves the page
/// cache in an unknown state (a retried `fsync` can report success for data that was
/// dropped), and with several sinks one may hold the batch while another does not. Chaining on
/// from any guess would either fork the chain or make a gap look intact. Reopening reads what
/// is really on disk (cutting a torn last line, see [`FileSink::open`]) and continues from
/// there.
///
/// Events in a failed batch may therefore still appear in the file: the log is *at least* a
/// record of every access that happened, and may also name a few that were stopped.
/// Likewise, dropping a `record` future after it was sent may still log the event.
///
/// # Group commit
///
/// Concurrent `record` calls queue to the writer thread. It takes everything queued (up to
/// [`AuditLogOptions::max_batch`]), seals the events in order, writes them to each sink with
/// one write and one `fdatasync`, then answers each caller. While it syncs, the next batch
/// queues up, so the more callers wait, the more one sync covers.
#[derive(Debug, Clone)]
pub struct AuditLog {
    writer: Arc<WriterHandle>,
    key: Arc<HmacKey>,
    shared: Arc<Shared>,
}

/// The way to the writer thread. When the last [`AuditLog`] clone goes, dropping this closes
/// the queue and waits for the thread to finish its batch and close the sinks, so the audit
/// file's writer lock is free by the time the log is gone (a reopen right after works).
#[derive(Debug)]
struct WriterHandle {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterHandle {
    fn tx(&self) -> Result<&mpsc::Sender<Request>, AuditError> {
        self.tx.as_ref().ok_or(AuditError::Closed)
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
struct Request {
    event: Event,
    reply: oneshot::Sender<Result<RecordedEvent, AuditError>>,
}

#[derive(Debug, Default)]
struct Shared {
    poison: OnceLock<Poison>,
    events: AtomicU64,
    batches: AtomicU64,
    write_failures: AtomicU64,
    /// The last entry durable on every sink: what an anchor records.
    last: std::sync::Mutex<Option<AnchorHead>>,
}

#[derive(Debug, Clone)]
struct Poison {
    failed_seq: u64,
    sink: String,
}

impl Poison {
    fn error(&self) -> AuditError {
        AuditError::Poisoned {
            failed_seq: self.failed_seq,
            sink: self.sink.clone(),
        }
    }
}

impl AuditLog {
    /// Opens the sinks, finds where the chain continues, and starts the writer thread.
    ///
    /// The chain continues from the file sinks' existing entries (they must agree); if there
    /// are none, from [`AuditLogOptions::continue_from`]; else it starts at `seq` 0 with `prev`
    /// all zeros.
    ///
    /// Blocking: it opens files and reads their ends. Call it at start-up, or from
    /// `spawn_blocking`. No Tokio runtime is needed; `record` works from any executor.
    ///
    /// # Errors
    /// [`AuditError::NoSinks`], [`AuditError::Sink`] (cannot open or create a file, a corrupt
    /// last line, …), the `ContinueFrom*` variants, [`AuditError::SinksDisagree`],
    /// [`AuditError::Spawn`].
    pub fn open(options: AuditLogOptions) -> Result<AuditLog, AuditError> {
        let AuditLogOptions {
            key,
            sinks: specs,
            continue_from,
            max_batch,
        } = options;
        if specs.is_empty() {
            return Err(AuditError::NoSinks);
        }
        let mut sinks: Vec<Box<dyn AuditSink>> = Vec::with_capacity(specs.len());
        for spec in specs {
            sinks.push(match spec {
                SinkSpec::File(path) => Box::new(FileSink::open(path)?),
                SinkSpec::Stdout => Box::new(StdoutSink::new()),
                SinkSpec::Custom(sink) => sink,
            });
        }

        let mut found: Option<(&str, ChainHead)> = None;
        for sink in &sinks {
            let Some(head) = sink.head() else { continue };
            match found {
                None => found = Some((sink.name(), head)),
                Some((first, h)) if h != head => {
                    return Err(AuditError::SinksDisagree {
                        first: first.to_owned(),
                        first_next_seq: h.next_seq,
                        other: sink.name().to_owned(),
                        other_next_seq: head.next_seq,
                    });
                }
                Some(_) => {}
            }
        }
        let head = match (found, continue_from) {
            (Some((_, head)), _) => head,
            (None, Some(previous)) => head_of_previous_file(previous)?,
            (None, None) => ChainHead::GENESIS,
        };
        tracing::debug!(
            next_seq = head.next_seq,
            prev = %head.prev,
            sinks = ?sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "audit log open"
        );

        let (tx, rx) = mpsc::channel(max_batch);
        let shared = Arc::new(Shared::default());
        let writer = Writer {
            chain_key: key.chain_key(),
            sinks,
            head,
            rx,
            shared: Arc::clone(&shared),
            max_batch,
        };
        let thread = std::thread::Builder::new()
            .name("keyturn-audit".to_owned())
            .spawn(move || writer.run())
            .map_err(|source| AuditError::Spawn { source })?;
        Ok(AuditLog {
            writer: Arc::new(WriterHandle {
                tx: Some(tx),
                thread: Some(thread),
            }),
            key: Arc::new(key),
            shared,
        })
    }

    /// Records `event` and returns once it is durable on every sink.
    ///
    /// # Errors
    /// [`AuditError::Write`] when a sink fails (the log is then poisoned),
    /// [`AuditError::Poisoned`] after that, [`AuditError::Closed`] if the writer is gone. On
    /// any error, the access must not happen.
    pub async fn record(&self, event: Event) -> Result<RecordedEvent, AuditError> {
        if let Some(p) = self.shared.poison.get() {
            return Err(p.error());
        }
        let (reply, answer) = oneshot::channel();
        self.writer
            .tx()?
            .send(Request { event, reply })
            .await
            .map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// Starts an event, with this log's HMAC key for [`EventBuilder::value`].
    pub fn event(
        &self,
        actor: Actor,
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> EventBuilder<'_> {
        EventBuilder::new(&self.key, actor, action, resource)
    }

    /// The audit HMAC key.
    #[must_use]
    pub fn hmac_key(&self) -> &HmacKey {
        &self.key
    }

    /// Whether a write has failed, so that every `record` now fails.
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        self.shared.poison.get().is_some()
    }

    /// Events queued for the writer and not yet taken into a batch.
    #[must_use]
    pub fn queue_depth(&self) -> usize {
        self.writer
            .tx()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// The last entry this log made durable since it was opened (`None` before the first):
    /// the head an [`super::Anchor`] records.
    #[must_use]
    pub fn head(&self) -> Option<AnchorHead> {
        *self
            .shared
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counters since open.
    #[must_use]
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            events: self.shared.events.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
            write_failures: self.shared.write_failures.load(Ordering::Relaxed),
        }
    }
}

fn head_of_previous_file(path: PathBuf) -> Result<ChainHead, AuditError> {
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(source) => {
            return Err(AuditError::ContinueFrom {
                source: SinkError::Open {
                    path: path.clone(),
                    source,
                },
                path,
            });
        }
    };
    let (last, torn) = match super::sink::file::last_line(&file, &path) {
        Ok(found) => found,
        Err(source) => return Err(AuditError::ContinueFrom { path, source }),
    };
    if torn.is_some() {
        return Err(AuditError::ContinueFromTorn { path });
    }
    let Some((checked, offset)) = last else {
        return Err(AuditError::ContinueFromEmpty { path });
    };
    if checked.computed != checked.stored {
        let line = super::sink::file::line_label(&file, Some(checked.seq), offset);
        return Err(AuditError::ContinueFrom {
            source: SinkError::CorruptTail {
                path: path.clone(),
                line,
                problem: "does not match its hash (edited?)".to_owned(),
            },
            path,
        });
    }
    ChainHead::after(checked.seq, checked.stored).ok_or(AuditError::SeqExhausted)
}

/// The writer thread's state. Only it touches the sinks and the chain head, so sealing needs no
/// lock and seqs are handed out in queue order.
struct Writer {
    /// What each line's `mac` is made with.
    chain_key: ChainKey,
    sinks: Vec<Box<dyn AuditSink>>,
    head: ChainHead,
    rx: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    max_batch: usize,
}

impl Writer {
    fn run(mut self) {
        let mut batch: Vec<Request> = Vec::with_capacity(self.max_batch);
        let mut results: Vec<Result<RecordedEvent, AuditError>> =
            Vec::with_capacity(self.max_batch);
        let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(req) => batch.push(req),
                    Err(_) => break,
                }
            }
            self.write_batch(&mut batch, &mut results, &mut buf);
            for (req, result) in batch.drain(..).zip(results.drain(..)) {
                // The caller may have given up waiting; the event stands either way.
                let _ = req.reply.send(result);
            }
        }
    }

    /// Seals and writes `batch`, leaving one result per request in `results`.
    fn write_batch(
        &mut self,
        batch: &mut [Request],
        results: &mut Vec<Result<RecordedEvent, AuditError>>,
        buf: &mut Vec<u8>,
    ) {
        if let Some(p) = self.shared.poison.get() {
            results.extend(batch.iter().map(|_| Err(p.error())));
            return;
        }
        buf.clear();
        let key = &self.chain_key;
        let mut next = self.head;
        for req in batch.iter() {
            if next.next_seq == u64::MAX {
                results.push(Err(AuditError::SeqExhausted));
                continue;
            }
            let time = Utc::now().trunc_subsecs(3);
            results.push(match seal_into(buf, key, next, time, &req.event) {
                Ok(hash) => {
                    let seq = next.next_seq;
                    next = ChainHead {
                        next_seq: seq + 1,
                        prev: hash,
                    };
                    Ok(RecordedEvent { seq, time, hash })
                }
                // This event is not written and takes no seq; the rest of the batch goes on.
                Err(e) => Err(AuditError::Encode {
                    seq: next.next_seq,
                    reason: e.to_string(),
                }),
            });
        }
        if buf.is_empty() {
            return;
        }
        for sink in &mut self.sinks {
            if let Err(e) = sink.write_durably(buf) {
                let failed_seq = self.head.next_seq;
                let name = sink.name().to_owned();
                tracing::error!(
                    sink = %name,
                    error = %e,
                    failed_seq,
                    "audit write failed; the audit log accepts no more events until restarted"
                );
                self.shared.write_failures.fetch_add(1, Ordering::Relaxed);
                let _ = self.shared.poison.set(Poison {
                    failed_seq,
                    sink: name.clone(),
                });
                let source = Arc::new(e);
                for r in results.iter_mut() {
                    if let Ok(rec) = r {
                        *r = Err(AuditError::Write {
                            seq: rec.seq,
                            sink: name.clone(),
                            source: Arc::clone(&source),
                        });
                    }
                }
                return;
            }
        }
        let written = next.next_seq - self.head.next_seq;
        self.head = next;
        // A non-empty buffer holds at least one sealed entry: `next` is past it.
        *self
            .shared
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(AnchorHead {
            seq: next.next_seq - 1,
            hash: next.prev,
        });
        self.shared.events.fetch_add(written, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

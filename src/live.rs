//! Live updates: what the persistence writers announce, and which of this
//! instance's streams hear it (the streams themselves are `http::live`).
//!
//! A writer that committed a batch of a section's events publishes one
//! message on the section's channel, `<ns>:{s:<id>}:live`, in the same
//! pipeline as the outbox XDEL that follows every commit (no round trip of
//! its own; in the section's slot on a cluster). The message is
//! `<last seq> <student> <student> ...`: the section's sequence after the
//! batch and the students it changed. So a stream says what PostgreSQL holds,
//! never something later undone without a revert of its own, and it works
//! with any number of instances: whichever writes a section, every instance
//! hears it.
//!
//! Every instance keeps one subscription (`PSUBSCRIBE <ns>:{s:*}:live`; on a
//! cluster, classic pub/sub reaches every node, so one connection to any
//! node hears every section) and hands each message to the streams that
//! watch the section or a student it names. The streams then read the
//! current state from Redis themselves: a message is only a nudge, so a lost
//! one costs freshness, not correctness, and each stream queues at most
//! [`QUEUE`] nudges: one that falls behind is marked and resynchronises
//! instead of queueing without bound. After the subscription was lost every
//! stream resynchronises the same way.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::{
    config::{LiveSettings, RedisSettings, RedisTarget},
    metrics::{LIVE_MESSAGES, LIVE_RESYNCS, LIVE_STREAMS, LIVE_SUBSCRIBED},
    seats::{
        announce::{Announcement, Message},
        LiveCounts,
    },
    sync::{lease::Leases, Persistence},
};

/// Nudges one stream may have waiting; beyond it the stream is marked lagged.
pub const QUEUE: usize = 32;

/// Longest wait between two attempts to subscribe again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a stream is told.
#[derive(Debug, Clone)]
pub enum Notice {
    Changed(Arc<Announcement>),
    /// Messages may have been missed: read everything again.
    Resync,
}

/// Why a stream cannot be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Disabled,
    /// `live.max_streams` are open on this instance.
    Full,
    ShuttingDown,
}

struct Watcher {
    id: u64,
    tx: mpsc::Sender<Notice>,
    lagged: AtomicBool,
}

impl Watcher {
    fn nudge(&self, notice: Notice) {
        if self.tx.try_send(notice).is_err() {
            self.lagged.store(true, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Routes {
    sections: HashMap<Uuid, Vec<Arc<Watcher>>>,
    students: HashMap<Uuid, Vec<Arc<Watcher>>>,
}

fn remove(map: &mut HashMap<Uuid, Vec<Arc<Watcher>>>, key: Uuid, id: u64) {
    if let Some(list) = map.get_mut(&key) {
        list.retain(|w| w.id != id);
        if list.is_empty() {
            map.remove(&key);
        }
    }
}

/// A section's counts as read from Redis, with its sequence read just
/// before them (so the counts are at least that recent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionNow {
    pub seq: i64,
    pub counts: LiveCounts,
}

/// The last read of one section's counts, shared by the section's streams
/// on this instance: the first stream a batch nudges reads, the others
/// (waiting on the lock meanwhile) find that read recent enough.
pub type SharedRead = Arc<tokio::sync::Mutex<Option<SectionNow>>>;

/// This instance's side of the live updates (one per process, in `AppState`).
pub struct Hub {
    settings: LiveSettings,
    namespace: String,
    open: AtomicUsize,
    next_id: AtomicU64,
    routes: Mutex<Routes>,
    reads: Mutex<HashMap<Uuid, Weak<tokio::sync::Mutex<Option<SectionNow>>>>>,
    closing: watch::Sender<bool>,
}

impl Hub {
    pub fn new(settings: &LiveSettings, namespace: &str) -> Self {
        metrics::gauge!(LIVE_STREAMS).set(0.0);
        metrics::gauge!(LIVE_SUBSCRIBED).set(0.0);
        Self {
            settings: settings.clone(),
            namespace: namespace.to_string(),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            routes: Mutex::new(Routes::default()),
            reads: Mutex::new(HashMap::new()),
            closing: watch::channel(false).0,
        }
    }

    pub fn settings(&self) -> &LiveSettings {
        &self.settings
    }

    /// Streams open on this instance.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Resolves once shutdown began (every stream ends then, so the HTTP
    /// server's graceful shutdown is not held up by them).
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Opens a stream's subscription: nudges for the sections it watches
    /// and, when `student` is given, for every batch that names them.
    pub fn subscribe(
        self: &Arc<Self>,
        student: Option<Uuid>,
    ) -> Result<(Subscription, mpsc::Receiver<Notice>), Refused> {
        if !self.settings.enabled {
            return Err(Refused::Disabled);
        }
        if *self.closing.borrow() {
            return Err(Refused::ShuttingDown);
        }
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.settings.max_streams).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return Err(Refused::Full);
        }
        metrics::gauge!(LIVE_STREAMS).increment(1.0);
        let (tx, rx) = mpsc::channel(QUEUE);
        let watcher = Arc::new(Watcher {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            lagged: AtomicBool::new(false),
        });
        if let Some(student) = student {
            self.lock()
                .students
                .entry(student)
                .or_default()
                .push(watcher.clone());
        }
        Ok((
            Subscription {
                hub: self.clone(),
                watcher,
                student,
                sections: Vec::new(),
            },
            rx,
        ))
    }

    /// The shared read of `section`'s counts (see [`SharedRead`]); it lives
    /// as long as a stream holds it.
    pub fn shared_read(&self, section: Uuid) -> SharedRead {
        let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(read) = reads.get(&section).and_then(Weak::upgrade) {
            return read;
        }
        reads.retain(|_, read| read.strong_count() > 0);
        let read = Arc::new(tokio::sync::Mutex::new(None));
        reads.insert(section, Arc::downgrade(&read));
        read
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands one announcement to the streams that care, each once.
    pub fn dispatch(&self, announcement: Announcement) {
        metrics::counter!(LIVE_MESSAGES).increment(1);
        let announcement = Arc::new(announcement);
        let routes = self.lock();
        let mut told: Vec<u64> = Vec::new();
        let by_section = routes.sections.get(&announcement.section).into_iter();
        let by_student = announcement
            .students
            .iter()
            .filter_map(|s| routes.students.get(s));
        for watcher in by_section.chain(by_student).flatten() {
            if !told.contains(&watcher.id) {
                told.push(watcher.id);
                watcher.nudge(Notice::Changed(announcement.clone()));
            }
        }
    }

    /// Every stream reads everything again (messages may have been missed).
    fn resync_all(&self) {
        let routes = self.lock();
        for watcher in routes
            .sections
            .values()
            .chain(routes.students.values())
            .flatten()
        {
            watcher.nudge(Notice::Resync);
        }
    }

    /// Keeps the subscription up (the server aborts it once the streams
    /// have ended): connects to the Redis (any node of a cluster, in turn),
    /// subscribes, dispatches, and after a loss subscribes again with
    /// backoff and resynchronises every stream. A wake for a section this
    /// instance writes asks its shard to read the outbox now (`persistence`,
    /// `leases`): events taken by another instance are then persisted (and
    /// announced) within a batch linger instead of a sweep.
    pub async fn run(
        self: Arc<Self>,
        redis: RedisSettings,
        persistence: Persistence,
        leases: Leases,
    ) {
        let urls = match RedisTarget::parse(redis.url.expose()) {
            Ok(RedisTarget::Single(url)) => vec![url],
            Ok(RedisTarget::Cluster(seeds)) => seeds,
            Err(e) => {
                // Not reached: the same URL built the server's connections.
                tracing::error!(error = %e, "live updates: redis.url is invalid");
                return std::future::pending().await;
            }
        };
        let pattern = format!("{}:{{s:*}}:live", self.namespace);
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0usize;
        let mut lost = false;
        loop {
            let url = &urls[attempt % urls.len()];
            attempt += 1;
            let session = async {
                let client = redis::Client::open(url.as_str())?;
                let mut pubsub = tokio::time::timeout(
                    redis.connect_timeout_ms.duration(),
                    client.get_async_pubsub(),
                )
                .await
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::Io, "connect timed out"))
                })??;
                pubsub.psubscribe(&pattern).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match session.await {
                Ok(pubsub) => {
                    metrics::gauge!(LIVE_SUBSCRIBED).set(1.0);
                    backoff = Duration::from_millis(100);
                    if lost {
                        tracing::info!("live updates: subscribed again; streams resynchronise");
                        metrics::counter!(LIVE_RESYNCS).increment(1);
                        self.resync_all();
                    }
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let payload = String::from_utf8_lossy(message.get_payload_bytes());
                        match Message::parse(&self.namespace, message.get_channel_name(), &payload)
                        {
                            Some(Message::Batch(a)) => self.dispatch(a),
                            Some(Message::Wake(section)) => {
                                if leases.owns(section) && !persistence.catch_up(section) {
                                    tracing::debug!(%section, "live updates: a wake found the shard's queue full; the sweeper catches up");
                                }
                            }
                            None => tracing::debug!(
                                channel = message.get_channel_name(),
                                "live updates: a message not of ours"
                            ),
                        }
                    }
                    metrics::gauge!(LIVE_SUBSCRIBED).set(0.0);
                    tracing::warn!("live updates: the subscription was lost; subscribing again");
                }
                Err(e) => {
                    if !lost {
                        tracing::warn!(error = %e, "live updates: cannot subscribe; retrying");
                    }
                }
            }
            lost = true;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// One stream's registration with the hub; dropping it unregisters.
pub struct Subscription {
    hub: Arc<Hub>,
    watcher: Arc<Watcher>,
    student: Option<Uuid>,
    sections: Vec<Uuid>,
}

impl Subscription {
    /// Hear of every batch of `section` from now on.
    pub fn watch_section(&mut self, section: Uuid) {
        if self.sections.contains(&section) {
            return;
        }
        self.sections.push(section);
        self.hub
            .lock()
            .sections
            .entry(section)
            .or_default()
            .push(self.watcher.clone());
    }

    pub fn watches(&self, section: Uuid) -> bool {
        self.sections.contains(&section)
    }

    /// Whether nudges were dropped since the last call (then resynchronise).
    pub fn take_lagged(&self) -> bool {
        self.watcher.lagged.swap(false, Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        {
            let mut routes = self.hub.lock();
            for section in &self.sections {
                remove(&mut routes.sections, *section, self.watcher.id);
            }
            if let Some(student) = self.student {
                remove(&mut routes.students, student, self.watcher.id);
            }
        }
        self.hub.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(LIVE_STREAMS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seats::announce::{channel, payload, WAKE};

    fn settings(max_streams: usize) -> LiveSettings {
        LiveSettings {
            enabled: true,
            max_streams,
            heartbeat_ms: crate::config::Millis::new(1000),
            max_stream_secs: 60,
        }
    }

    #[test]
    fn an_announcement_reads_back_what_was_published() {
        let section = Uuid::new_v4();
        let students = [Uuid::new_v4(), Uuid::new_v4()];
        let text = payload(42, students);
        let channel = channel("ns", section);
        let Some(Message::Batch(parsed)) = Message::parse("ns", &channel, &text) else {
            panic!("a batch");
        };
        assert_eq!(parsed.section, section);
        assert_eq!(parsed.seq, 42);
        assert_eq!(parsed.students, students);
        assert_eq!(Message::parse("other", &channel, &text), None);
        assert_eq!(Message::parse("ns", &channel, "x"), None);
        assert_eq!(
            Message::parse("ns", &channel, WAKE),
            Some(Message::Wake(section))
        );
        assert!(matches!(
            Message::parse("ns", &channel, "7"),
            Some(Message::Batch(a)) if a.students.is_empty()
        ));
    }

    #[test]
    fn streams_hear_their_section_and_their_student_once_and_beyond_the_queue_are_lagged() {
        let hub = Arc::new(Hub::new(&settings(2), "ns"));
        let (section, student) = (Uuid::new_v4(), Uuid::new_v4());
        let (mut sub, mut rx) = hub.subscribe(Some(student)).unwrap();
        sub.watch_section(section);
        let (_other, mut other_rx) = hub.subscribe(None).unwrap();
        assert_eq!(hub.subscribe(None).err(), Some(Refused::Full));
        hub.dispatch(Announcement {
            section,
            seq: 1,
            students: vec![student],
        });
        assert!(matches!(rx.try_recv(), Ok(Notice::Changed(a)) if a.seq == 1));
        assert!(rx.try_recv().is_err(), "told once although named twice");
        assert!(other_rx.try_recv().is_err());
        for seq in 0..(QUEUE as i64 + 5) {
            hub.dispatch(Announcement {
                section: Uuid::new_v4(),
                seq,
                students: vec![student],
            });
        }
        assert!(sub.take_lagged());
        assert!(!sub.take_lagged());
        drop(sub);
        assert_eq!(hub.open_streams(), 1);
        assert!(hub.lock().sections.is_empty() && hub.lock().students.is_empty());
        assert!(hub.subscribe(None).is_ok());
    }
}

//! The per-message metrics (messages and payload bytes received and sent, by type, and the
//! sizes of received messages), kept per thread: the message path adds to memory that no
//! other thread writes, with a plain load and store, no locked instruction and no cache
//! line shared between workers. A scrape sums the shards.
//!
//! Profiles of scenario b put about a tenth of the daemon's CPU into these counters when
//! they were shared atomics (four `lock`ed adds per message and the histogram's five);
//! here a message costs one thread-local lookup and three adds.
//!
//! Invariants:
//! - each of the first `SHARDS - 1` shards is written by one thread only, the thread that
//!   drew its slot (slots are never reused); threads past them share the last shard and
//!   add to it atomically, so no count is ever lost;
//! - the series, names, help texts, labels and buckets are those of the prometheus
//!   metrics they replaced (`shapes` are such metrics, never registered, never counted
//!   on): a scrape cannot tell the difference;
//! - the histogram's count and sum are the received messages and bytes of both types,
//!   which is what `observe` kept: sizes are whole numbers, so the sum is exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, MetricFamily};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts};

use super::labels::Kind;

/// Shards per [`Messages`]: one per runtime worker thread, as a rule (the daemon runs one
/// per CPU); later threads share the last one.
const SHARDS: usize = 64;

/// Upper bounds of the size histogram's buckets (16 B to 4 MiB, times 4); a last bucket
/// counts larger messages.
const SIZE_BOUNDS: [u64; 10] = [
    16, 64, 256, 1024, 4096, 16384, 65536, 262_144, 1_048_576, 4_194_304,
];

/// Where the next thread's slot comes from.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard index, drawn on first use.
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Relaxed);
}

/// One thread's counts, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    /// Messages received, `[text, binary]`.
    received: [AtomicU64; 2],
    /// Their payload bytes.
    received_bytes: [AtomicU64; 2],
    /// Messages sent (echoes), `[text, binary]`.
    sent: [AtomicU64; 2],
    /// Their payload bytes.
    sent_bytes: [AtomicU64; 2],
    /// Received messages per size bucket (not cumulative); the last is over every bound.
    sizes: [AtomicU64; SIZE_BOUNDS.len() + 1],
}

/// The per-message metrics: the shards, and the shapes of the series they are exported as.
/// A clone shares the counts (the registry holds one to collect from).
#[derive(Clone)]
pub(super) struct Messages {
    /// The counts, one shard per thread.
    shards: Arc<[Shard]>,
    /// `wsechod_messages_received_total{type}`, `wsechod_messages_sent_total{type}`,
    /// `wsechod_received_bytes_total{type}`, `wsechod_sent_bytes_total{type}`.
    counters: [IntCounterVec; 4],
    /// `wsechod_message_size_bytes`.
    size: Histogram,
}

/// Adds `n` to a count: plainly in the thread's own shard, atomically in the shared one.
#[inline]
fn add(count: &AtomicU64, n: u64, own: bool) {
    if own {
        count.store(count.load(Relaxed).wrapping_add(n), Relaxed);
    } else {
        count.fetch_add(n, Relaxed);
    }
}

/// The size bucket of a message of `len` bytes.
#[inline]
fn bucket(len: u64) -> usize {
    SIZE_BOUNDS
        .iter()
        .position(|&b| len <= b)
        .unwrap_or(SIZE_BOUNDS.len())
}

impl Messages {
    pub(super) fn new() -> Self {
        let vec = |name: &str, help: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &["type"]).expect("valid metric");
            for kind in [Kind::Text, Kind::Binary] {
                v.with_label_values(&[kind.label()]);
            }
            v
        };
        let counters = [
            vec(
                "wsechod_messages_received_total",
                "WebSocket messages received, by type.",
            ),
            vec(
                "wsechod_messages_sent_total",
                "WebSocket messages sent (echoes), by type.",
            ),
            vec(
                "wsechod_received_bytes_total",
                "Payload bytes of WebSocket messages received, by type.",
            ),
            vec(
                "wsechod_sent_bytes_total",
                "Payload bytes of WebSocket messages sent, by type.",
            ),
        ];
        let size = Histogram::with_opts(
            HistogramOpts::new(
                "wsechod_message_size_bytes",
                "Size of received WebSocket messages.",
            )
            .buckets(SIZE_BOUNDS.iter().map(|&b| b as f64).collect()),
        )
        .expect("valid metric");
        Messages {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            counters,
            size,
        }
    }

    /// This thread's shard, and whether it is its own.
    #[inline]
    fn shard(&self) -> (&Shard, bool) {
        let slot = SLOT.with(|s| *s);
        let own = slot < SHARDS - 1;
        (&self.shards[if own { slot } else { SHARDS - 1 }], own)
    }

    /// A message of `len` payload bytes arrived.
    #[inline]
    pub(super) fn received(&self, kind: Kind, len: usize) {
        let (shard, own) = self.shard();
        let len = len as u64;
        add(&shard.received[kind as usize], 1, own);
        add(&shard.received_bytes[kind as usize], len, own);
        add(&shard.sizes[bucket(len)], 1, own);
    }

    /// A message of `len` payload bytes was queued for sending.
    #[inline]
    pub(super) fn sent(&self, kind: Kind, len: usize) {
        let (shard, own) = self.shard();
        add(&shard.sent[kind as usize], 1, own);
        add(&shard.sent_bytes[kind as usize], len as u64, own);
    }

    /// The sum of one count over every shard.
    fn total(&self, count: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| count(s).load(Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Messages received so far, all types.
    pub(super) fn received_total(&self) -> u64 {
        self.total(|s| &s.received[0]) + self.total(|s| &s.received[1])
    }
}

impl Collector for Messages {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs: Vec<&Desc> = self.counters.iter().flat_map(|c| c.desc()).collect();
        descs.extend(self.size.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = Vec::with_capacity(self.counters.len() + 1);
        for (i, shape) in self.counters.iter().enumerate() {
            for mut family in shape.collect() {
                for m in family.mut_metric() {
                    let kind = match m.get_label().first().map(|l| l.value()) {
                        Some("binary") => Kind::Binary as usize,
                        _ => Kind::Text as usize,
                    };
                    let value = self.total(|s| {
                        [&s.received, &s.sent, &s.received_bytes, &s.sent_bytes][i]
                            .get(kind)
                            .expect("two types")
                    });
                    let mut c = Counter::default();
                    c.set_value(value as f64);
                    m.set_counter(c);
                }
                families.push(family);
            }
        }
        for mut family in self.size.collect() {
            for m in family.mut_metric() {
                let mut h = prometheus::proto::Histogram::clone(m.get_histogram());
                let mut cumulative = 0;
                let mut buckets = h.get_bucket().to_vec();
                for (i, b) in buckets.iter_mut().enumerate() {
                    cumulative += self.total(|s| &s.sizes[i]);
                    b.set_cumulative_count(cumulative);
                }
                h.set_bucket(buckets);
                h.set_sample_count(self.received_total());
                let bytes =
                    self.total(|s| &s.received_bytes[0]) + self.total(|s| &s.received_bytes[1]);
                h.set_sample_sum(bytes as f64);
                m.set_histogram(h);
            }
            families.push(family);
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, Registry, TextEncoder};

    use super::*;

    fn text(m: Messages) -> String {
        let registry = Registry::new();
        registry.register(Box::new(m)).unwrap();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// What the prometheus metrics this replaces export for the same messages.
    fn reference(received: &[(Kind, usize)], sent: &[(Kind, usize)]) -> String {
        let registry = Registry::new();
        let shapes = Messages::new();
        for c in &shapes.counters {
            registry.register(Box::new(c.clone())).unwrap();
        }
        registry.register(Box::new(shapes.size.clone())).unwrap();
        let [rx, tx, rx_bytes, tx_bytes] = &shapes.counters;
        for &(kind, len) in received {
            rx.with_label_values(&[kind.label()]).inc();
            rx_bytes
                .with_label_values(&[kind.label()])
                .inc_by(len as u64);
            shapes.size.observe(len as f64);
        }
        for &(kind, len) in sent {
            tx.with_label_values(&[kind.label()]).inc();
            tx_bytes
                .with_label_values(&[kind.label()])
                .inc_by(len as u64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_scrape_reads_as_the_prometheus_metrics_it_replaces() {
        let received = [
            (Kind::Text, 0),
            (Kind::Text, 16),
            (Kind::Binary, 17),
            (Kind::Binary, 65536),
            (Kind::Text, 4_194_304),
            (Kind::Binary, 4_194_305),
        ];
        let sent = [(Kind::Text, 5), (Kind::Binary, 70000)];
        let m = Messages::new();
        for &(kind, len) in &received {
            m.received(kind, len);
        }
        for &(kind, len) in &sent {
            m.sent(kind, len);
        }
        assert_eq!(m.received_total(), received.len() as u64);
        assert_eq!(text(m), reference(&received, &sent));
    }

    #[test]
    fn every_thread_counts_also_past_the_shards() {
        let m = Messages::new();
        let threads = SHARDS + 6;
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..1000 {
                        m.received(Kind::Binary, 100);
                        m.sent(Kind::Binary, 100);
                    }
                });
            }
        });
        let n = threads as u64 * 1000;
        assert_eq!(m.received_total(), n);
        assert_eq!(m.total(|s| &s.sent_bytes[1]), n * 100);
        assert_eq!(m.total(|s| &s.sizes[bucket(100)]), n);
    }

    #[test]
    fn buckets_hold_their_upper_bound() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(16), 0);
        assert_eq!(bucket(17), 1);
        assert_eq!(bucket(4_194_304), 9);
        assert_eq!(bucket(u64::MAX), 10);
    }
}

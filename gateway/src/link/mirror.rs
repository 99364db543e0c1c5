//! One mirror partition: fetch from the source leader, write to the destination
//! leader, keep every offset.
//!
//! Progress lives in the destination itself: its end offset plus the partition's
//! shift is the next source offset to mirror. A restarted gateway reads it and
//! goes on, with nothing lost and nothing written twice. While one round's
//! batches are being written (up to [`IN_FLIGHT`] produce requests at a time, an
//! idempotent producer, acks=all), the next fetch is already on its way.
//!
//! Every produce answer must put the batch at the offset the link expected; an
//! answer elsewhere means something else wrote to the destination partition, and
//! the mirror stops as FAILED with that reason rather than mirror at wrong offsets.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::records::{self, Piece, MAX_FILL};
use super::wire::{self, code};
use crate::backend::conn::{BrokerConn, Reply};
use crate::backend::Cluster;
use crate::telemetry;

/// Produce requests in flight per partition: what an idempotent producer allows.
pub const IN_FLIGHT: usize = 5;
/// How long a fetch waits at the source for new records: short while records
/// flow, doubling with each empty answer up to the longest. Kafka answers a long
/// poll as soon as records arrive; some brokers (tansu) only when its time is up,
/// so a short wait while records flow keeps the mirror's lag low on those too.
const MIN_WAIT_MS: i32 = 10;
const MAX_WAIT_MS: i32 = 500;
/// After an answer smaller than this, the next fetch asks the broker to gather
/// this much (for at most [`MIN_WAIT_MS`]), and is not sent sooner than that
/// after the last: a source written a record at a time is then read in rounds of
/// at most a hundred a second, not in a loop as fast as the broker answers.
const GATHER_BYTES: i32 = 16 << 10;
/// Bytes one fetch brings at most.
const FETCH_BYTES: i32 = 8 << 20;
/// Bytes a fetch may grow to when one transaction does not fit.
const MAX_FETCH_BYTES: i32 = 64 << 20;
/// How long an answer may take beyond the fetch wait.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a partition's mirroring reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub partition: i32,
    /// What the partition is doing: starting, mirroring, source_unavailable,
    /// retrying, stopped, failed.
    pub state: &'static str,
    /// The next source offset to mirror (all before it are on the mirror).
    pub mirrored_to: i64,
    /// The source's last stable offset, as last seen.
    pub source_end: i64,
    pub lag: i64,
    pub lag_ms: i64,
    pub records: u64,
    pub filler: u64,
    pub bytes: u64,
    pub last_error: Option<String>,
    #[serde(skip)]
    pub newest_timestamp: i64,
}

/// Everything one partition's task needs.
pub struct Job {
    pub mirror: String,
    pub source: Arc<Cluster>,
    pub destination: Arc<Cluster>,
    pub source_topic: String,
    pub destination_topic: String,
    pub partition: i32,
    pub shift: i64,
    pub status: Arc<Mutex<Status>>,
    pub stop: watch::Receiver<bool>,
    /// Where a partition reports that its mirror must fail, with the reason.
    pub failed: mpsc::UnboundedSender<(String, String)>,
}

/// Why a round ended.
enum End {
    /// Told to stop.
    Stopped,
    /// The mirror cannot go on: FAILED with this reason.
    Fatal(String),
    /// Try again after a pause; `source` when the source could not be reached.
    Retry { error: anyhow::Error, source: bool },
}

impl Job {
    fn set(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Runs until stopped or failed.
pub async fn run(mut job: Job) {
    let mut pause = Duration::from_millis(200);
    loop {
        if job.stopped() {
            job.set(|s| s.state = "stopped");
            return;
        }
        job.set(|s| s.state = "starting");
        match mirror(&job).await {
            End::Stopped => {
                job.set(|s| s.state = "stopped");
                return;
            }
            End::Fatal(reason) => {
                tracing::error!(mirror = %job.mirror, partition = job.partition, %reason, "mirror failed");
                job.set(|s| {
                    s.state = "failed";
                    s.last_error = Some(reason.clone());
                });
                let _ = job.failed.send((job.mirror.clone(), reason));
                return;
            }
            End::Retry { error, source } => {
                tracing::warn!(mirror = %job.mirror, partition = job.partition, error = %format!("{error:#}"), "mirroring paused; retrying");
                job.set(|s| {
                    s.state = if source { "source_unavailable" } else { "retrying" };
                    s.last_error = Some(format!("{error:#}"));
                });
                if source {
                    job.source.mark_stale();
                } else {
                    job.destination.mark_stale();
                }
            }
        }
        // Also lets a produce lost with its connection settle before the
        // destination's end offset is read again.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = job.stop.changed() => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Where a source error leaves the mirror.
fn source_error(e: anyhow::Error) -> End {
    End::Retry { error: e, source: true }
}

fn destination_error(e: anyhow::Error) -> End {
    End::Retry { error: e, source: false }
}

/// Produce requests sent and not yet answered, in order.
struct Writer<'a> {
    job: &'a Job,
    conn: BrokerConn,
    version: i16,
    producer: (i64, i16),
    sequence: i32,
    /// The destination offset the next batch must land at.
    next: i64,
    /// (answer, where it must land, records, data records, bytes, newest timestamp)
    waiting: VecDeque<(Reply, i64, i64, i64, usize, i64)>,
}

impl Writer<'_> {
    async fn write(&mut self, piece: Piece) -> Result<(), End> {
        match piece {
            Piece::Batch { bytes, count } => self.send(bytes, count, true).await,
            Piece::Fill { count, timestamp } => {
                let mut left = count;
                while left > 0 {
                    let n = left.min(MAX_FILL);
                    self.send(records::filler(n, timestamp), n, false).await?;
                    left -= n;
                }
                Ok(())
            }
        }
    }

    async fn send(&mut self, batch: Bytes, count: i64, data: bool) -> Result<(), End> {
        if self.waiting.len() >= IN_FLIGHT {
            self.settle_one().await?;
        }
        let mut batch = batch.to_vec();
        let timestamp = crate::codec::batches::headers(&batch).next().map_or(-1, |h| h.first_timestamp);
        records::stamp(&mut batch, self.producer.0, self.producer.1, self.sequence)
            .ok_or_else(|| End::Fatal("a batch to mirror is cut short".into()))?;
        let size = batch.len();
        let frame = wire::produce_frame(self.version, &self.job.destination_topic, self.job.partition, Bytes::from(batch))
            .map_err(destination_error)?;
        let reply = self.conn.send(frame).await.map_err(|e| destination_error(e.into()))?;
        self.waiting.push_back((reply, self.next, count, if data { count } else { 0 }, size, timestamp));
        self.next += count;
        // Sequence numbers wrap at the top of i32, as Kafka's do.
        self.sequence = ((i64::from(self.sequence) + count) % (i64::from(i32::MAX) + 1)) as i32;
        Ok(())
    }

    async fn flush(&self) -> Result<(), End> {
        self.conn.flush().await.map_err(|e| destination_error(e.into()))
    }

    async fn settle_one(&mut self) -> Result<(), End> {
        let Some((reply, expected, count, data, size, timestamp)) = self.waiting.pop_front() else {
            return Ok(());
        };
        self.flush().await?;
        let resp = match tokio::time::timeout(ANSWER_TIMEOUT, reply).await {
            Ok(Ok(Ok(r))) => r,
            Ok(Ok(Err(e))) => return Err(destination_error(e.into())),
            Ok(Err(_)) => return Err(destination_error(anyhow!("connection to {} lost", self.conn.addr()))),
            Err(_) => return Err(destination_error(anyhow!("{} did not answer a produce in time", self.conn.addr()))),
        };
        let (error, base, message) = wire::produced(&resp, self.version).map_err(destination_error)?;
        if error != 0 {
            return Err(destination_error(anyhow!(
                "the destination refused a batch for {}-{} (error {error}{})",
                self.job.destination_topic,
                self.job.partition,
                message.map(|m| format!(": {m}")).unwrap_or_default()
            )));
        }
        if base != expected {
            return Err(End::Fatal(format!(
                "destination partition {}-{} was written outside the link: a batch meant for offset {expected} landed at {base}",
                self.job.destination_topic, self.job.partition
            )));
        }
        let mirror = &self.job.mirror;
        telemetry::mirror_written(mirror, data as u64, (count - data) as u64, size as u64);
        self.job.set(|s| {
            s.mirrored_to = expected + count + self.job.shift;
            s.records += data as u64;
            s.filler += (count - data) as u64;
            s.bytes += size as u64;
            if data > 0 && timestamp > 0 {
                s.newest_timestamp = timestamp;
            }
        });
        Ok(())
    }

    async fn settle_all(&mut self) -> Result<(), End> {
        while !self.waiting.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }
}

/// Mirrors until told to stop or something fails.
async fn mirror(job: &Job) -> End {
    let (source, dest, p) = (&job.source, &job.destination, job.partition);
    let producer = match wire::init_producer(dest).await {
        Ok(x) => x,
        Err(e) => return destination_error(e),
    };
    let end = match wire::log_end(dest, &job.destination_topic, p).await {
        Ok((high_watermark, _)) => high_watermark,
        Err(e) => return destination_error(e),
    };
    let mut next = end + job.shift;
    job.set(|s| s.mirrored_to = next);
    let (fetch_version, produce_version) = match (wire::fetch_version(source), wire::produce_version(dest)) {
        (Ok(f), Ok(pv)) => (f, pv),
        (Err(e), _) => return source_error(e),
        (_, Err(e)) => return destination_error(e),
    };
    let source_leader = match wire::leader(source, &job.source_topic, p).await {
        Ok(l) => l,
        Err(e) => return source_error(e),
    };
    let fetcher = match source.checkout(source_leader).await {
        Ok(c) => c,
        Err(e) => return source_error(e.into()),
    };
    let dest_leader = match wire::leader(dest, &job.destination_topic, p).await {
        Ok(l) => l,
        Err(e) => return destination_error(e),
    };
    let conn = match dest.checkout(dest_leader).await {
        Ok(c) => c,
        Err(e) => return destination_error(e.into()),
    };
    let mut writer = Writer {
        job,
        conn,
        version: produce_version,
        producer,
        sequence: 0,
        next: end,
        waiting: VecDeque::new(),
    };
    let mut fetch_bytes = FETCH_BYTES;
    let mut wait_ms = MIN_WAIT_MS;
    let mut trickle = false;
    let mut last_fetch = std::time::Instant::now();
    tracing::info!(mirror = %job.mirror, partition = p, from = next, shift = job.shift, "mirroring");
    loop {
        if job.stopped() {
            return match writer.settle_all().await {
                Ok(()) => End::Stopped,
                Err(e) => e,
            };
        }
        if trickle {
            let since = last_fetch.elapsed();
            let pace = Duration::from_millis(MIN_WAIT_MS as u64);
            if since < pace {
                tokio::time::sleep(pace - since).await;
            }
        }
        last_fetch = std::time::Instant::now();
        // The next fetch goes out before this round's produces are awaited.
        let min_bytes = if trickle { GATHER_BYTES } else { 1 };
        let frame = match wire::fetch_frame_min(fetch_version, &job.source_topic, p, next, wait_ms, min_bytes, fetch_bytes) {
            Ok(f) => f,
            Err(e) => return source_error(e),
        };
        let fetch = async {
            let reply = fetcher.send(frame).await?;
            fetcher.flush().await?;
            Ok::<_, anyhow::Error>(reply)
        };
        let reply = match fetch.await {
            Ok(r) => r,
            Err(e) => return source_error(e),
        };
        if let Err(e) = writer.flush().await {
            return e;
        }
        if let Err(e) = writer.settle_all().await {
            return e;
        }
        let wait = ANSWER_TIMEOUT + Duration::from_millis(wait_ms as u64);
        let resp = match tokio::time::timeout(wait, reply).await {
            Ok(Ok(Ok(r))) => r,
            Ok(Ok(Err(e))) => return source_error(e.into()),
            Ok(Err(_)) => return source_error(anyhow!("connection to {} lost", fetcher.addr())),
            Err(_) => return source_error(anyhow!("{} did not answer a fetch in time", fetcher.addr())),
        };
        let fetched = match wire::fetched(&resp, fetch_version) {
            Ok(f) => f,
            Err(e) => return source_error(e),
        };
        tracing::trace!(mirror = %job.mirror, partition = p, next, bytes = fetched.records.len(), waited = ?last_fetch.elapsed(), wait_ms, "fetched");
        match fetched.error_code {
            0 => {}
            code::OFFSET_OUT_OF_RANGE => match out_of_range(job, next).await {
                Ok(Some(start)) => {
                    tracing::warn!(mirror = %job.mirror, partition = p, from = next, to = start, "the source deleted records before they were mirrored; their offsets are filled");
                    if let Err(e) = writer.write(Piece::Fill { count: start - next, timestamp: -1 }).await {
                        return e;
                    }
                    next = start;
                    continue;
                }
                Ok(None) => continue,
                Err(e) => return e,
            },
            c => return source_error(anyhow!("the source answered a fetch of {}-{p} with error {c}", job.source_topic)),
        }
        // A source that lists no aborted transactions (tansu) is read up to the
        // first transaction whose marker this answer does not hold.
        let (records, aborted) = if fetched.aborted.is_empty() {
            records::settled(&fetched.records)
        } else {
            (fetched.records.clone(), fetched.aborted.clone())
        };
        if records.is_empty() && !fetched.records.is_empty() {
            if fetch_bytes >= MAX_FETCH_BYTES {
                return End::Fatal(format!(
                    "a transaction at offset {next} holds more than {} MiB before its marker",
                    MAX_FETCH_BYTES >> 20
                ));
            }
            fetch_bytes = (fetch_bytes * 2).min(MAX_FETCH_BYTES);
            continue;
        }
        let (pieces, after) = match records::cut(&records, next, &aborted) {
            Ok(x) => x,
            Err(e) => return End::Fatal(e.to_string()),
        };
        wait_ms = if pieces.is_empty() { (wait_ms * 2).min(MAX_WAIT_MS) } else { MIN_WAIT_MS };
        trickle = !pieces.is_empty() && fetched.records.len() < GATHER_BYTES as usize;
        let pieces = match records::coalesce(pieces) {
            Ok(p) => p,
            Err(e) => return End::Fatal(e.to_string()),
        };
        for piece in pieces {
            if let Err(e) = writer.write(piece).await {
                return e;
            }
        }
        next = after;
        let lag = (fetched.last_stable_offset - next).max(0);
        job.set(|s| {
            s.state = "mirroring";
            s.last_error = None;
            s.source_end = fetched.last_stable_offset;
            s.lag = lag;
            s.lag_ms = if lag == 0 || s.newest_timestamp <= 0 {
                0
            } else {
                (now_ms() - s.newest_timestamp).max(0)
            };
            telemetry::mirror_lag(&job.mirror, p, s.lag, s.lag_ms as f64 / 1000.0);
        });
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// After OFFSET_OUT_OF_RANGE at `next`: the source's first offset when retention
/// removed records before they were mirrored (they are filled), `None` to fetch
/// again, or FAILED when the source now ends before the mirror.
async fn out_of_range(job: &Job, next: i64) -> Result<Option<i64>, End> {
    let p = job.partition;
    let earliest = wire::list_offsets(&job.source, &job.source_topic, &[p], wire::EARLIEST, false)
        .await
        .map_err(source_error)?;
    let (end, _) = wire::log_end(&job.source, &job.source_topic, p).await.map_err(source_error)?;
    let start = earliest.get(&p).copied().unwrap_or(0);
    if next > end {
        return Err(End::Fatal(format!(
            "source partition {}-{p} ends at offset {end}, before the mirror's {next}: the source lost records it had (truncated, or deleted and created again)",
            job.source_topic
        )));
    }
    Ok((next < start).then_some(start))
}

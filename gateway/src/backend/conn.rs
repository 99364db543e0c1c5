//! One pipelined connection to one backend broker.
//!
//! Requests are queued without waiting, written in order, and matched to responses
//! in order (Kafka answers each connection in request order). Causeway assigns its
//! own correlation ids here, so a connection can be reused by another client session
//! without responses ever mixing. When the connection dies, every waiting request
//! gets [`BackendError::Disconnected`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::oneshot;

use super::transport::Connector;
use super::BackendError;
use crate::codec::{self, Response};
use crate::telemetry;

/// A waiting request's answer.
pub type Reply = oneshot::Receiver<Result<Response, BackendError>>;

type Pending = Arc<std::sync::Mutex<VecDeque<(i32, oneshot::Sender<Result<Response, BackendError>>)>>>;
type Writer = BufWriter<tokio::io::WriteHalf<Box<dyn super::transport::Stream>>>;

struct Shared {
    addr: String,
    alive: AtomicBool,
    in_flight: AtomicUsize,
    /// When the broker limits the login (KIP-368): from then on the
    /// connection takes no new requests, and goes once its answers are in.
    retire_at: Option<std::time::Instant>,
}

struct WriteSide {
    wr: Writer,
    next_id: i32,
    /// Dropped with the last handle: tells the reader task to stop, which closes
    /// the socket (a split stream closes only when both halves are gone).
    _closed: oneshot::Sender<()>,
}

/// A handle to a broker connection; cheap to clone, all clones share the socket.
///
/// Writes happen on the caller's task (no hop through a writer task); a reader task
/// matches responses to requests. Callers that send several requests in a row call
/// [`BrokerConn::flush`] once after them.
#[derive(Clone)]
pub struct BrokerConn {
    write: Arc<tokio::sync::Mutex<WriteSide>>,
    pending: Pending,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BrokerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConn")
            .field("addr", &self.shared.addr)
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl BrokerConn {
    /// Connects to `addr` and starts the reader task.
    pub async fn connect(
        connector: &dyn Connector,
        addr: &str,
        cluster: &str,
        max_frame: usize,
    ) -> Result<Self, BackendError> {
        let (stream, lifetime) = connector
            .connect_for(addr.to_string())
            .await
            .map_err(|source| BackendError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let (rd, wr) = tokio::io::split(stream);
        // Retired at 85% of the login's lifetime, as Kafka clients re-authenticate
        // between 85% and 95%: a fresh connection logs in again, and the broker
        // never has to close one with requests on it.
        let retire_at = lifetime.map(|l| std::time::Instant::now() + l.mul_f64(0.85));
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            alive: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            retire_at,
        });
        let pending: Pending = Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let (closed, closed_rx) = oneshot::channel();
        telemetry::backend_connection_opened(cluster);
        tokio::spawn(read_loop(
            rd,
            closed_rx,
            pending.clone(),
            shared.clone(),
            max_frame,
            cluster.to_string(),
        ));
        Ok(Self {
            write: Arc::new(tokio::sync::Mutex::new(WriteSide {
                wr: BufWriter::with_capacity(64 * 1024, wr),
                next_id: 1,
                _closed: closed,
            })),
            pending,
            shared,
        })
    }

    /// Writes `frame` (a request whose correlation id is replaced) into the send
    /// buffer and returns where its response will arrive. Order of calls is wire
    /// order. The bytes leave at the next [`BrokerConn::flush`] or when the buffer fills.
    pub async fn send(&self, frame: Bytes) -> Result<Reply, BackendError> {
        let (reply, rx) = oneshot::channel();
        self.write_frame(frame, Some(reply)).await?;
        Ok(rx)
    }

    /// Writes a request that gets no response (produce with acks=0).
    pub async fn send_oneway(&self, frame: Bytes) -> Result<(), BackendError> {
        self.write_frame(frame, None).await
    }

    /// Sends everything written so far.
    pub async fn flush(&self) -> Result<(), BackendError> {
        let mut w = self.write.lock().await;
        if let Err(e) = w.wr.flush().await {
            return Err(self.failed(&e));
        }
        Ok(())
    }

    async fn write_frame(
        &self,
        frame: Bytes,
        reply: Option<oneshot::Sender<Result<Response, BackendError>>>,
    ) -> Result<(), BackendError> {
        if frame.len() < codec::MIN_REQUEST_HEADER {
            return Err(BackendError::Internal("request frame shorter than its header"));
        }
        if !self.is_alive() {
            return Err(self.disconnected());
        }
        let mut w = self.write.lock().await;
        let id = w.next_id;
        w.next_id = w.next_id.checked_add(1).unwrap_or(1);
        if let Some(reply) = reply {
            // Registered before the bytes leave, so the reader always finds it.
            match self.pending.lock() {
                Ok(mut p) => p.push_back((id, reply)),
                Err(_) => return Err(BackendError::Internal("pending queue poisoned")),
            }
            self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        let prefix = codec::request_prefix(&frame, id);
        let written = crate::io::write_prefixed(&mut w.wr, &prefix, &frame[codec::MIN_REQUEST_HEADER..]);
        if let Err(e) = written.await {
            return Err(self.failed(&e));
        }
        Ok(())
    }

    fn failed(&self, e: &std::io::Error) -> BackendError {
        tracing::debug!(addr = %self.shared.addr, error = %e, "backend write failed");
        self.shared.alive.store(false, Ordering::Release);
        self.disconnected()
    }

    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// Alive, and its login not about to run out: new requests may go on it.
    pub fn is_usable(&self) -> bool {
        self.is_alive() && self.shared.retire_at.is_none_or(|t| std::time::Instant::now() < t)
    }

    /// Requests sent whose responses have not arrived.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    fn disconnected(&self) -> BackendError {
        BackendError::Disconnected {
            addr: self.shared.addr.clone(),
        }
    }
}

/// How long a connection nobody holds waits for the answers still due.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

async fn read_loop(
    mut rd: tokio::io::ReadHalf<Box<dyn super::transport::Stream>>,
    mut closed: oneshot::Receiver<()>,
    pending: Pending,
    shared: Arc<Shared>,
    max_frame: usize,
    cluster: String,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Once no handle is left, answers still due are read before the socket
    // closes (a retired connection's last requests among them), for at most
    // DRAIN: a request that never left, or a broker that never answers,
    // cannot keep the task.
    let mut unused = false;
    let drain = tokio::time::sleep(DRAIN);
    tokio::pin!(drain);
    let reason: String = 'read: loop {
        loop {
            let frame = match codec::split_frame(&mut buf, max_frame) {
                Ok(Some(frame)) => frame.freeze(),
                Ok(None) => break,
                Err(e) => break 'read format!("bad frame from broker: {e}"),
            };
            let next = match pending.lock() {
                Ok(mut p) => p.pop_front(),
                Err(_) => break 'read "internal lock poisoned".to_string(),
            };
            let Some((id, reply)) = next else {
                break 'read "response without a request".to_string();
            };
            let got = codec::response_correlation_id(&frame);
            if got != Some(id) {
                let _ = reply.send(Err(BackendError::Protocol(format!(
                    "correlation id {got:?} where {id} was expected"
                ))));
                break 'read format!("correlation id {got:?} where {id} was expected");
            }
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            // The session may have gone; its response is simply dropped.
            let _ = reply.send(Ok(Response { frame }));
        }
        if unused && pending.lock().map_or(true, |p| p.is_empty()) {
            break "no longer used".to_string();
        }
        if let Some(need) = codec::pending_frame_len(&buf, max_frame) {
            // The whole response at once (a broker's length is bounded by the
            // cluster's max_frame_bytes): growing a large fetch response in steps
            // would copy it again at every step.
            buf.reserve(need.saturating_sub(buf.len()));
        } else if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) => break "closed by broker".to_string(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            },
            _ = &mut closed, if !unused => {
                unused = true;
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            }
            () = &mut drain, if unused => break "no longer used; answers still due were not awaited".to_string(),
        }
    };
    shared.alive.store(false, Ordering::Release);
    telemetry::backend_connection_closed(&cluster);
    let waiting: Vec<_> = match pending.lock() {
        Ok(mut p) => p.drain(..).collect(),
        Err(_) => Vec::new(),
    };
    if !waiting.is_empty() {
        telemetry::backend_error(&cluster, "disconnected");
        tracing::warn!(addr = %shared.addr, %reason, waiting = waiting.len(), "backend connection lost with requests in flight");
    } else {
        tracing::debug!(addr = %shared.addr, %reason, "backend connection closed");
    }
    for (_, reply) in waiting {
        let _ = reply.send(Err(BackendError::Disconnected {
            addr: shared.addr.clone(),
        }));
    }
}

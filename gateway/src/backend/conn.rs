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
use tokio::sync::{mpsc, oneshot, Notify};

use super::transport::Connector;
use super::BackendError;
use crate::codec::{self, Response};
use crate::telemetry;

/// A waiting request's answer.
pub type Reply = oneshot::Receiver<Result<Response, BackendError>>;

struct Outbound {
    frame: Bytes,
    reply: Option<oneshot::Sender<Result<Response, BackendError>>>,
}

struct Shared {
    addr: String,
    alive: AtomicBool,
    in_flight: AtomicUsize,
    dead: Notify,
}

/// A handle to a broker connection; cheap to clone, all clones share the socket.
#[derive(Clone)]
pub struct BrokerConn {
    tx: mpsc::UnboundedSender<Outbound>,
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
    /// Connects to `addr` and starts the reader and writer tasks.
    pub async fn connect(
        connector: &dyn Connector,
        addr: &str,
        cluster: &str,
        max_frame: usize,
    ) -> Result<Self, BackendError> {
        let stream = connector
            .connect(addr.to_string())
            .await
            .map_err(|source| BackendError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let (rd, wr) = tokio::io::split(stream);
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            alive: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            dead: Notify::new(),
        });
        let pending = Arc::new(std::sync::Mutex::new(VecDeque::new()));
        telemetry::backend_connection_opened(cluster);
        let cluster = cluster.to_string();
        tokio::spawn(write_loop(wr, rx, pending.clone(), shared.clone()));
        tokio::spawn(read_loop(rd, pending, shared.clone(), max_frame, cluster));
        Ok(Self { tx, shared })
    }

    /// Queues `frame` (a request whose correlation id will be replaced) and returns
    /// where its response will arrive. Never waits: order of calls is wire order.
    pub fn send(&self, frame: Bytes) -> Result<Reply, BackendError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(frame, Some(reply))?;
        Ok(rx)
    }

    /// Queues a request that gets no response (produce with acks=0).
    pub fn send_oneway(&self, frame: Bytes) -> Result<(), BackendError> {
        self.enqueue(frame, None)
    }

    fn enqueue(
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
        if reply.is_some() {
            self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        self.tx
            .send(Outbound { frame, reply })
            .map_err(|_| self.disconnected())
    }

    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
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

type Pending = Arc<std::sync::Mutex<VecDeque<(i32, oneshot::Sender<Result<Response, BackendError>>)>>>;

async fn write_loop(
    wr: tokio::io::WriteHalf<Box<dyn super::transport::Stream>>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    pending: Pending,
    shared: Arc<Shared>,
) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let mut next_id: i32 = 1;
    'outer: loop {
        let first = tokio::select! {
            out = rx.recv() => out,
            () = shared.dead.notified() => None,
        };
        let Some(mut out) = first else { break };
        loop {
            let id = next_id;
            next_id = next_id.checked_add(1).unwrap_or(1);
            if let Some(reply) = out.reply.take() {
                match pending.lock() {
                    Ok(mut p) => p.push_back((id, reply)),
                    Err(_) => break 'outer,
                }
            }
            let prefix = codec::request_prefix(&out.frame, id);
            let write = async {
                wr.write_all(&prefix).await?;
                wr.write_all(&out.frame[codec::MIN_REQUEST_HEADER..]).await
            };
            if let Err(e) = write.await {
                tracing::debug!(addr = %shared.addr, error = %e, "backend write failed");
                break 'outer;
            }
            match rx.try_recv() {
                Ok(next) => out = next,
                Err(_) => break,
            }
        }
        if let Err(e) = wr.flush().await {
            tracing::debug!(addr = %shared.addr, error = %e, "backend flush failed");
            break;
        }
    }
    shared.alive.store(false, Ordering::Release);
    let _ = wr.shutdown().await;
}

async fn read_loop(
    mut rd: tokio::io::ReadHalf<Box<dyn super::transport::Stream>>,
    pending: Pending,
    shared: Arc<Shared>,
    max_frame: usize,
    cluster: String,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
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
        if let Some(need) = codec::pending_frame_len(&buf, max_frame) {
            buf.reserve(need.saturating_sub(buf.len()).min(8 * 1024 * 1024));
        } else if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break "closed by broker".to_string(),
            Ok(_) => {}
            Err(e) => break format!("read failed: {e}"),
        }
    };
    shared.alive.store(false, Ordering::Release);
    shared.dead.notify_one();
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

//! One client connection.
//!
//! The reader takes frames off the socket, hands each to the handlers (which queue
//! the backend requests in arrival order) and passes the pending answer to the
//! writer. The writer awaits answers strictly in request order, so a client may
//! pipeline as much as `max_in_flight` allows and still gets responses in the order
//! it asked. A malformed frame, an unknown API or a failed backend closes the
//! connection cleanly; other clients never notice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{handlers, Gateway, ProxyError};
use crate::backend::SessionConns;
use crate::codec::{self, CodecError, Request};
use crate::telemetry;

/// The answer to one request: the bytes after the correlation id.
pub type Answer = BoxFuture<'static, Result<Bytes, ProxyError>>;

struct Pending {
    correlation_id: i32,
    api: &'static str,
    started: Instant,
    answer: Answer,
}

/// Serves one client until it disconnects or breaks the protocol.
pub async fn run(gateway: Arc<Gateway>, stream: TcpStream, peer: SocketAddr) {
    telemetry::connection_opened();
    tracing::debug!(%peer, "client connected");
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(gateway.max_in_flight);
    let writer = tokio::spawn(write_answers(rx, wr, peer));
    let mut conns = SessionConns::new(gateway.backends.clone());
    let outcome = read_requests(&gateway, rd, &mut conns, tx).await;
    match &outcome {
        Ok(()) => tracing::debug!(%peer, "client closed the connection"),
        Err(e) => tracing::info!(%peer, error = %e, "closing client connection"),
    }
    // The writer finishes the answers already queued, then stops.
    let _ = writer.await;
    drop(conns);
    telemetry::connection_closed();
}

async fn read_requests(
    gateway: &Arc<Gateway>,
    mut rd: OwnedReadHalf,
    conns: &mut SessionConns,
    tx: mpsc::Sender<Pending>,
) -> Result<(), ProxyError> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        loop {
            let frame = match codec::split_frame(&mut buf, gateway.max_frame) {
                Ok(Some(frame)) => frame.freeze(),
                Ok(None) => break,
                Err(e) => {
                    telemetry::protocol_error(match e {
                        CodecError::FrameTooLarge { .. } => "frame_too_large",
                        _ => "bad_length",
                    });
                    return Err(e.into());
                }
            };
            let started = Instant::now();
            let request = Request::parse(frame).inspect_err(|e| {
                telemetry::protocol_error(match e {
                    CodecError::UnknownApiKey(_) => "unknown_api",
                    _ => "bad_header",
                })
            })?;
            let correlation_id = request.correlation_id();
            let api = api_name(&request);
            let answer = handlers::dispatch(gateway, conns, request).await?;
            match answer {
                Some(answer) => {
                    let pending = Pending {
                        correlation_id,
                        api,
                        started,
                        answer,
                    };
                    let pending = match tx.try_send(pending) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                        Err(mpsc::error::TrySendError::Full(p)) => p,
                    };
                    // max_in_flight reached: send what is buffered, then wait for
                    // the writer to make room.
                    conns.flush().await;
                    if tx.send(pending).await.is_err() {
                        // The writer stopped: the client is gone.
                        return Ok(());
                    }
                }
                None => telemetry::request(api, started.elapsed()),
            }
        }
        // Every whole frame is handled: send the batch to the backends.
        conns.flush().await;
        if let Some(need) = codec::pending_frame_len(&buf, gateway.max_frame) {
            buf.reserve(need.saturating_sub(buf.len()).min(8 * 1024 * 1024));
        } else if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let n = rd.read_buf(&mut buf).await?;
        if n == 0 {
            if !buf.is_empty() {
                telemetry::protocol_error("truncated_frame");
                tracing::debug!(bytes = buf.len(), "client left mid-frame");
            }
            return Ok(());
        }
        telemetry::bytes_in(n);
    }
}

async fn write_answers(mut rx: mpsc::Receiver<Pending>, wr: OwnedWriteHalf, peer: SocketAddr) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    while let Some(pending) = rx.recv().await {
        let body = match pending.answer.await {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(%peer, api = pending.api, error = %e, "cannot answer request; closing connection");
                break;
            }
        };
        let prefix = codec::response_prefix(pending.correlation_id, body.len());
        let written = async {
            wr.write_all(&prefix).await?;
            wr.write_all(&body).await?;
            if rx.is_empty() {
                wr.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        if let Err(e) = written.await {
            tracing::debug!(%peer, error = %e, "client write failed");
            break;
        }
        telemetry::bytes_out(prefix.len() + body.len());
        telemetry::request(pending.api, pending.started.elapsed());
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

fn api_name(request: &Request) -> &'static str {
    crate::codec::versions::audited(request.api_key)
        .map(|a| api_key_name(a.key))
        .unwrap_or("other")
}

/// A stable, lower-case label for an API key.
pub fn api_key_name(key: kafka_protocol::messages::ApiKey) -> &'static str {
    use kafka_protocol::messages::ApiKey::*;
    match key {
        Produce => "produce",
        Fetch => "fetch",
        ListOffsets => "list_offsets",
        Metadata => "metadata",
        OffsetCommit => "offset_commit",
        OffsetFetch => "offset_fetch",
        FindCoordinator => "find_coordinator",
        JoinGroup => "join_group",
        Heartbeat => "heartbeat",
        LeaveGroup => "leave_group",
        SyncGroup => "sync_group",
        DescribeGroups => "describe_groups",
        ListGroups => "list_groups",
        ApiVersions => "api_versions",
        CreateTopics => "create_topics",
        DeleteTopics => "delete_topics",
        DeleteRecords => "delete_records",
        InitProducerId => "init_producer_id",
        OffsetForLeaderEpoch => "offset_for_leader_epoch",
        AddPartitionsToTxn => "add_partitions_to_txn",
        AddOffsetsToTxn => "add_offsets_to_txn",
        EndTxn => "end_txn",
        TxnOffsetCommit => "txn_offset_commit",
        DescribeAcls => "describe_acls",
        CreateAcls => "create_acls",
        DeleteAcls => "delete_acls",
        DescribeConfigs => "describe_configs",
        AlterConfigs => "alter_configs",
        CreatePartitions => "create_partitions",
        DeleteGroups => "delete_groups",
        ElectLeaders => "elect_leaders",
        IncrementalAlterConfigs => "incremental_alter_configs",
        OffsetDelete => "offset_delete",
        DescribeClientQuotas => "describe_client_quotas",
        AlterClientQuotas => "alter_client_quotas",
        DescribeUserScramCredentials => "describe_user_scram_credentials",
        AlterUserScramCredentials => "alter_user_scram_credentials",
        DescribeCluster => "describe_cluster",
        _ => "other",
    }
}

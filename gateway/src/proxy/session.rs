//! One client connection, served by one task.
//!
//! The task takes whole frames off the socket and hands each to the handlers, which
//! queue the backend requests in arrival order and return the pending answer. The
//! answers wait in a queue that yields them strictly in request order, so a client
//! may pipeline as much as `max_in_flight` allows and still gets responses in the
//! order it asked. Reading and answering happen in the same task: a backend reply
//! wakes this task alone, with no hop through a writer task. A malformed frame, an
//! unknown API or a failed backend closes the connection cleanly; other clients
//! never notice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

use super::{handlers, login, Gateway, ProxyError};
use crate::authz::Who;
use crate::backend::SessionConns;
use crate::codec::{self, CodecError, Request};
use crate::telemetry;

/// Largest frame read before a SASL login (Kafka's default
/// sasl.server.max.receive.size).
const PRE_LOGIN_MAX_FRAME: usize = 512 * 1024;

/// The answer to one request: the bytes after the correlation id.
pub type Answer = BoxFuture<'static, Result<Bytes, ProxyError>>;

/// An answer with what is needed to write it back and account for it.
type Pending = BoxFuture<'static, (i32, &'static str, Instant, Result<Bytes, ProxyError>)>;

/// Serves one client, reading `rd` and writing `wr` (a TCP or TLS stream's
/// halves), until it disconnects or breaks the protocol. `principal` is who
/// the client proved to be, or ANONYMOUS.
pub async fn run<R, W>(gateway: Arc<Gateway>, rd: R, wr: W, peer: SocketAddr, principal: Arc<str>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    telemetry::connection_opened();
    tracing::debug!(%peer, "client connected");
    let mut conns = SessionConns::new(gateway.backends.clone());
    let who = gateway.who(&principal, peer.ip());
    match serve(&gateway, rd, wr, who, &mut conns).await {
        Ok(()) => tracing::debug!(%peer, "client closed the connection"),
        Err(e) => tracing::info!(%peer, error = %e, "closing client connection"),
    }
    drop(conns);
    telemetry::connection_closed();
}

async fn serve<R, W>(
    gateway: &Arc<Gateway>,
    mut rd: R,
    wr: W,
    mut who: Who,
    conns: &mut SessionConns,
) -> Result<(), ProxyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut login = crate::sasl::Login::default();
    // The certificate subject, for an ACL mapper (the TLS principal is
    // `User:` and the subject).
    let tls_subject = (*who.principal != *super::routes::ANONYMOUS)
        .then(|| who.principal.strip_prefix("User:").map(str::to_string))
        .flatten();
    // The ACL mapper's last answer: for which client id and login, until when.
    let mut mapped: Option<(String, Option<String>, Who, Instant)> = None;
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // The share of the gateway's request buffer budget that the frame at the
    // front of `buf` holds while its bytes arrive.
    let mut reserved: Option<super::budget::Held> = None;
    let mut answers: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut open = true;
    let lanes = Arc::new(super::fetch::Lanes::default());
    // The idle deadline is re-armed lazily: activity only records the time,
    // and a deadline that finds recent activity moves itself on.
    let idle = tokio::time::sleep(gateway.idle_timeout);
    tokio::pin!(idle);
    let mut active = tokio::time::Instant::now();
    // With SASL, the connection has this long to log in, whatever it sends
    // (ApiVersions again and again included).
    let login_deadline = gateway.sasl.as_ref().map(|a| active + a.login_timeout());
    let login_timer = tokio::time::sleep_until(login_deadline.unwrap_or(active + gateway.idle_timeout));
    tokio::pin!(login_timer);
    loop {
        // Handle every whole frame already read, as far as max_in_flight allows.
        while answers.len() < gateway.max_in_flight {
            // Before a login, frames are SASL-sized, as Kafka's
            // sasl.server.max.receive.size keeps them.
            let max_frame = if gateway.sasl.is_some() && !login.authenticated(Instant::now()) {
                gateway.max_frame.min(PRE_LOGIN_MAX_FRAME)
            } else {
                gateway.max_frame
            };
            let frame = match codec::split_frame(&mut buf, max_frame) {
                Ok(Some(frame)) => {
                    reserved = None;
                    frame.freeze()
                }
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
            if let Some(auth) = &gateway.sasl {
                use kafka_protocol::messages::ApiKey;
                let now = Instant::now();
                if matches!(request.api_key, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate) {
                    let (answer, refused) = login::step(auth, &mut login, &request)?;
                    answers.push_back(Box::pin(futures::future::ready((correlation_id, api, started, Ok(answer)))));
                    if refused {
                        // Answer, then close; nothing after it is read.
                        open = false;
                        buf.clear();
                        break;
                    }
                    if let Some(p) = login.principal() {
                        if *who.principal != *p {
                            who = gateway.who(&p, who.host);
                        }
                    }
                    continue;
                }
                if login.expired(now) {
                    telemetry::protocol_error("login_expired");
                    return Err(ProxyError::Unauthenticated(
                        "the authentication ran out (KIP-368); the client did not log in again".into(),
                    ));
                }
                if !login.authenticated(now) && request.api_key != ApiKey::ApiVersions {
                    telemetry::protocol_error("unauthenticated");
                    return Err(ProxyError::Unauthenticated(format!("{api} before SASL authentication")));
                }
            }
            let mapped_who = if gateway.maps_principals() && request.api_key != kafka_protocol::messages::ApiKey::ApiVersions {
                let client_id = request.header.client_id.as_deref().unwrap_or("");
                let user = login.user();
                let fresh = mapped.as_ref().is_some_and(|(c, u, _, until)| {
                    c == client_id && u.as_deref() == user && Instant::now() < *until
                });
                if !fresh {
                    let identity = crate::plugins::acl::Identity {
                        sasl_user: user.map(str::to_string),
                        tls_subject: tls_subject.clone(),
                        peer: who.host,
                    };
                    match gateway.mapped_who(&identity, client_id) {
                        Some(Ok((w, until))) => mapped = Some((client_id.to_string(), user.map(str::to_string), w, until)),
                        Some(Err(why)) => {
                            telemetry::protocol_error("acl_mapper_refused");
                            return Err(ProxyError::Unauthenticated(format!("the ACL mapper refused this client: {why}")));
                        }
                        None => {}
                    }
                }
                mapped.as_ref().map(|(_, _, w, _)| w)
            } else {
                None
            };
            let client = mapped_who.unwrap_or(&who);
            // Clusters where principals log in as themselves use the client's.
            conns.use_principal(&client.principal).await;
            match handlers::dispatch(gateway, conns, &lanes, client, request).await? {
                Some(answer) => answers.push_back(Box::pin(
                    answer.map(move |r| (correlation_id, api, started, r)),
                )),
                None => telemetry::request(api, started.elapsed()),
            }
        }
        // Send what the frames queued to the backends, in one write per broker.
        conns.flush().await;
        if !open && answers.is_empty() {
            return Ok(());
        }
        let room = open && answers.len() < gateway.max_in_flight;
        if room {
            if let Some(need) = codec::pending_frame_len(&buf, gateway.max_frame) {
                let before_login = gateway.sasl.is_some() && !login.authenticated(Instant::now());
                let need = if before_login {
                    need.min(PRE_LOGIN_MAX_FRAME + codec::LENGTH_PREFIX)
                } else {
                    need
                };
                // The whole frame in one buffer, if the gateway-wide budget
                // has room: growing it as it fills would copy what came so far
                // at every step (a 1 MB produce about twice over). Otherwise grow
                // with what the client has actually sent (at most doubling), so
                // a declared length alone never sets memory aside. No client
                // takes more than a sixteenth of the budget, and one that has
                // yet to log in takes none.
                let missing = need.saturating_sub(buf.len());
                let step = buf.capacity().max(64 * 1024);
                if missing > step && reserved.is_none() && !before_login {
                    reserved = gateway.request_buffer_budget.take_share(missing, 16);
                    if reserved.is_some() {
                        // A buffer of exactly the frame, holding what came so
                        // far: reserving on the old one could allocate up to
                        // twice as much and copy frames already split off.
                        let mut whole = BytesMut::with_capacity(need);
                        whole.extend_from_slice(&buf);
                        buf = whole;
                    }
                }
                buf.reserve(if reserved.is_some() { missing } else { missing.min(step) });
            } else if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
        }
        tokio::select! {
            // Cancel-safe: bytes read are in `buf` even if the other branch wins.
            read = rd.read_buf(&mut buf), if room => {
                let n = read?;
                if n == 0 {
                    if !buf.is_empty() {
                        telemetry::protocol_error("truncated_frame");
                        tracing::debug!(bytes = buf.len(), "client left mid-frame");
                    }
                    // Answer what was asked, then close.
                    open = false;
                } else {
                    telemetry::bytes_in(n);
                    active = tokio::time::Instant::now();
                }
            }
            () = &mut idle, if answers.is_empty() => {
                let due = active + gateway.idle_timeout;
                if tokio::time::Instant::now() >= due {
                    telemetry::idle_closed();
                    tracing::debug!(idle = ?gateway.idle_timeout, "closing an idle client connection");
                    return Ok(());
                }
                idle.as_mut().reset(due);
            }
            () = &mut login_timer, if login_deadline.is_some() && !login.logged_in() => {
                telemetry::protocol_error("login_timeout");
                return Err(ProxyError::Unauthenticated("no SASL login in time; connection closed".into()));
            }
            Some(done) = answers.next(), if !answers.is_empty() => {
                active = tokio::time::Instant::now();
                // A client that stops reading its answers cannot hold the
                // connection (and what it buffers) for ever: before a login
                // it has until the login deadline, after it the idle timeout.
                let limit = match login_deadline {
                    Some(deadline) if !login.logged_in() => deadline,
                    _ => active + gateway.idle_timeout,
                };
                let write = async {
                    write_answer(&mut wr, done).await?;
                    // Write every other answer that is ready, then flush once.
                    while let Some(Some(done)) = answers.next().now_or_never() {
                        write_answer(&mut wr, done).await?;
                    }
                    wr.flush().await?;
                    Ok::<(), ProxyError>(())
                };
                match tokio::time::timeout_at(limit, write).await {
                    Ok(written) => written?,
                    Err(_) => {
                        telemetry::protocol_error("write_stalled");
                        return Err(ProxyError::ClientIo(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client stopped reading its answers",
                        )));
                    }
                }
            }
        }
    }
}

async fn write_answer<W: AsyncWrite + Unpin>(
    wr: &mut BufWriter<W>,
    (correlation_id, api, started, answer): (i32, &'static str, Instant, Result<Bytes, ProxyError>),
) -> Result<(), ProxyError> {
    let body = answer.inspect_err(|e| {
        tracing::warn!(api, error = %e, "cannot answer request; closing connection");
    })?;
    tracing::trace!(api, correlation_id, bytes = body.len(), "answer written");
    let prefix = codec::response_prefix(correlation_id, body.len());
    crate::io::write_prefixed(wr, &prefix, &body).await?;
    telemetry::bytes_out(prefix.len() + body.len());
    telemetry::request(api, started.elapsed());
    Ok(())
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

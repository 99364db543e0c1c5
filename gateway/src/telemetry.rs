//! Every metric Causeway exports, named once, with its unit and help text.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const REQUESTS: &str = "causeway_requests_total";
const REQUEST_SECONDS: &str = "causeway_request_duration_seconds";
const BYTES_IN: &str = "causeway_client_bytes_received_total";
const BYTES_OUT: &str = "causeway_client_bytes_sent_total";
const CONNECTIONS: &str = "causeway_client_connections";
const CONNECTIONS_TOTAL: &str = "causeway_client_connections_accepted_total";
const PROTOCOL_ERRORS: &str = "causeway_client_protocol_errors_total";
const TLS_FAILURES: &str = "causeway_client_tls_handshake_failures_total";
const SASL_LOGINS: &str = "causeway_client_sasl_logins_total";
const AUTHORIZATION: &str = "causeway_authorization_decisions_total";
const ADMIN_REFUSED: &str = "causeway_admin_unauthorized_total";
const CONNECTIONS_REFUSED: &str = "causeway_client_connections_refused_total";
const IDLE_CLOSED: &str = "causeway_client_idle_closed_total";
const BACKEND_CONNECTIONS: &str = "causeway_backend_connections";
const BACKEND_ERRORS: &str = "causeway_backend_errors_total";
const BACKEND_RESENDS: &str = "causeway_backend_resends_total";
const FETCH_READ_AHEAD: &str = "causeway_fetch_read_ahead_total";
const FETCH_READ_AHEAD_HELD: &str = "causeway_fetch_read_ahead_bytes_held";
const REQUEST_BUFFERS_RESERVED: &str = "causeway_request_buffer_bytes_reserved";
const METADATA_REFRESHES: &str = "causeway_backend_metadata_refreshes_total";
const CLUSTER_UP: &str = "causeway_backend_cluster_up";
const PLUGIN_CALLS: &str = "causeway_plugin_calls_total";
const PLUGIN_SECONDS: &str = "causeway_plugin_call_duration_seconds";
const PLUGIN_TRAPS: &str = "causeway_plugin_failures_total";
const PLUGIN_REJECTED: &str = "causeway_plugin_rejected_batches_total";
const PLUGIN_CHANGED: &str = "causeway_plugin_changed_batches_total";
const PLUGIN_COUNTER: &str = "causeway_plugin_counter_total";
const PLUGIN_RECORDS: &str = "causeway_plugin_records_total";
const MIRROR_LAG: &str = "causeway_mirror_lag_records";
const MIRROR_LAG_SECONDS: &str = "causeway_mirror_lag_seconds";
const MIRROR_RECORDS: &str = "causeway_mirror_records_total";
const MIRROR_BYTES: &str = "causeway_mirror_bytes_total";
const MIRROR_FILLER: &str = "causeway_mirror_filler_offsets_total";
const MIRROR_STATE: &str = "causeway_mirror_state";
const TUNNEL_CONNECTIONS: &str = "causeway_tunnel_connections";
const TUNNEL_RTT: &str = "causeway_tunnel_rtt_seconds";
const TUNNEL_CWND: &str = "causeway_tunnel_congestion_window_bytes";
const TUNNEL_LOST: &str = "causeway_tunnel_lost_packets_total";
const TUNNEL_SENT: &str = "causeway_tunnel_sent_bytes_total";
const TUNNEL_RECEIVED: &str = "causeway_tunnel_received_bytes_total";
const TUNNEL_RECONNECTS: &str = "causeway_tunnel_reconnects_total";
const TUNNEL_HANDSHAKE_FAILURES: &str = "causeway_tunnel_peers_refused_total";
const TUNNEL_STREAMS: &str = "causeway_tunnel_streams_total";

/// Installs the Prometheus recorder and describes every metric.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(PLUGIN_SECONDS.to_string()),
            &[0.000_001, 0.000_005, 0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_SECONDS.to_string()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )?
        .install_recorder()?;
    describe_counter!(REQUESTS, Unit::Count, "Client requests received, by API.");
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Time from reading a client request to writing its response, by API."
    );
    describe_counter!(BYTES_IN, Unit::Bytes, "Bytes read from clients.");
    describe_counter!(BYTES_OUT, Unit::Bytes, "Bytes written to clients.");
    describe_gauge!(CONNECTIONS, Unit::Count, "Open client connections.");
    describe_counter!(CONNECTIONS_TOTAL, Unit::Count, "Client connections accepted.");
    describe_counter!(CONNECTIONS_REFUSED, Unit::Count, "Client connections closed on accept, by the limit they were over.");
    describe_counter!(IDLE_CLOSED, Unit::Count, "Client connections closed for sitting idle.");
    describe_counter!(SASL_LOGINS, Unit::Count, "Client SASL logins, by outcome (ok, refused).");
    describe_counter!(ADMIN_REFUSED, Unit::Count, "Admin requests refused for a missing or wrong bearer token.");
    describe_counter!(AUTHORIZATION, Unit::Count, "Authorization decisions on requests, by resource type and decision.");
    describe_counter!(TLS_FAILURES, Unit::Count, "Client TLS handshakes that failed, by reason (refused, timeout).");
    describe_counter!(
        PROTOCOL_ERRORS,
        Unit::Count,
        "Client connections closed for a protocol violation, by kind."
    );
    describe_counter!(PLUGIN_CALLS, Unit::Count, "Plugin calls, by plugin.");
    describe_histogram!(PLUGIN_SECONDS, Unit::Seconds, "Time in a plugin call, by plugin.");
    describe_counter!(PLUGIN_TRAPS, Unit::Count, "Plugin calls that trapped, timed out or ran out of memory, by plugin.");
    describe_counter!(PLUGIN_REJECTED, Unit::Count, "Record batches a plugin rejected, by plugin.");
    describe_counter!(PLUGIN_CHANGED, Unit::Count, "Record batches re-encoded because a filter changed them.");
    describe_counter!(PLUGIN_COUNTER, Unit::Count, "Counters plugins keep through the host interface.");
    describe_counter!(
        PLUGIN_RECORDS,
        Unit::Count,
        "Records a record filter judged, by its verdict (passed, changed, dropped, fanned_out)."
    );
    describe_gauge!(BACKEND_CONNECTIONS, Unit::Count, "Open backend connections, by cluster.");
    describe_counter!(BACKEND_ERRORS, Unit::Count, "Backend failures, by cluster and kind.");
    describe_counter!(
        BACKEND_RESENDS,
        Unit::Count,
        "Requests sent again on a new connection after theirs was lost (clusters behind the tunnel), by outcome (answered, failed)."
    );
    describe_counter!(
        FETCH_READ_AHEAD,
        Unit::Count,
        "Backend fetches asked for ahead of a consumer's next fetch, by outcome (sent; used by the next fetch; unused when it asked for other offsets; over_budget when gateway.fetch_read_ahead_max_bytes was held already)."
    );
    describe_gauge!(
        FETCH_READ_AHEAD_HELD,
        Unit::Bytes,
        "Bytes of gateway.fetch_read_ahead_max_bytes held by fetches asked for ahead and not yet taken."
    );
    describe_gauge!(
        REQUEST_BUFFERS_RESERVED,
        Unit::Bytes,
        "Bytes of gateway.request_buffer_max_bytes set aside for client requests whose bytes are still arriving."
    );
    describe_counter!(
        METADATA_REFRESHES,
        Unit::Count,
        "Metadata requests Causeway made itself (refreshes and health probes), by cluster."
    );
    describe_gauge!(MIRROR_LAG, Unit::Count, "Source records (offsets) not yet on the mirror, by mirror and partition.");
    describe_gauge!(
        MIRROR_LAG_SECONDS,
        Unit::Seconds,
        "Age of the newest record on the mirror while the mirror lags, 0 when caught up, by mirror and partition."
    );
    describe_counter!(MIRROR_RECORDS, Unit::Count, "Source records written to the mirror, by mirror.");
    describe_counter!(MIRROR_BYTES, Unit::Bytes, "Record batch bytes written to the mirror, by mirror.");
    describe_counter!(
        MIRROR_FILLER,
        Unit::Count,
        "Offsets the mirror filled because the source holds no record to mirror there (markers, aborted data, compaction), by mirror."
    );
    describe_gauge!(MIRROR_STATE, Unit::Count, "1 for the mirror's current state, 0 for the others, by mirror and state.");
    describe_gauge!(TUNNEL_CONNECTIONS, Unit::Count, "Open tunnel connections, by peer and slot.");
    describe_gauge!(TUNNEL_RTT, Unit::Seconds, "Smoothed round-trip time of a tunnel connection, by peer and slot.");
    describe_gauge!(TUNNEL_CWND, Unit::Bytes, "Congestion window of a tunnel connection, by peer and slot.");
    describe_counter!(TUNNEL_LOST, Unit::Count, "Packets a tunnel connection lost, by peer.");
    describe_counter!(TUNNEL_SENT, Unit::Bytes, "UDP bytes a tunnel sent, by peer.");
    describe_counter!(TUNNEL_RECEIVED, Unit::Bytes, "UDP bytes a tunnel received, by peer.");
    describe_counter!(TUNNEL_RECONNECTS, Unit::Count, "Tunnel connections lost and dialled again, by cloud address.");
    describe_counter!(
        TUNNEL_HANDSHAKE_FAILURES,
        Unit::Count,
        "Tunnel peers refused, by reason (handshake, identity, hello, clusters, timeout, retry)."
    );
    describe_counter!(TUNNEL_STREAMS, Unit::Count, "Streams opened through the tunnel, by cluster and outcome.");
    describe_gauge!(
        CLUSTER_UP,
        Unit::Count,
        "1 when the backend cluster answered its bootstrap, by cluster."
    );
    Ok(handle)
}

pub fn mirror_lag(mirror: &str, partition: i32, records: i64, seconds: f64) {
    let p = partition.to_string();
    gauge!(MIRROR_LAG, "mirror" => mirror.to_string(), "partition" => p.clone()).set(records as f64);
    gauge!(MIRROR_LAG_SECONDS, "mirror" => mirror.to_string(), "partition" => p).set(seconds);
}

pub fn mirror_written(mirror: &str, records: u64, filler: u64, bytes: u64) {
    counter!(MIRROR_RECORDS, "mirror" => mirror.to_string()).increment(records);
    counter!(MIRROR_FILLER, "mirror" => mirror.to_string()).increment(filler);
    counter!(MIRROR_BYTES, "mirror" => mirror.to_string()).increment(bytes);
}

pub fn mirror_state(mirror: &str, state: &str, all: &[&str]) {
    for s in all {
        gauge!(MIRROR_STATE, "mirror" => mirror.to_string(), "state" => s.to_string()).set(if *s == state { 1.0 } else { 0.0 });
    }
}

/// A tunnel connection's statistics, `last` being the previous sample.
pub fn tunnel_stats(peer: &str, slot: &str, now: &quinn::ConnectionStats, last: &quinn::ConnectionStats) {
    let labels = [("peer", peer.to_string()), ("slot", slot.to_string())];
    gauge!(TUNNEL_CONNECTIONS, &labels).set(1.0);
    gauge!(TUNNEL_RTT, &labels).set(now.path.rtt.as_secs_f64());
    gauge!(TUNNEL_CWND, &labels).set(now.path.cwnd as f64);
    let peer = [("peer", peer.to_string())];
    counter!(TUNNEL_LOST, &peer).increment(now.path.lost_packets.saturating_sub(last.path.lost_packets));
    counter!(TUNNEL_SENT, &peer).increment(now.udp_tx.bytes.saturating_sub(last.udp_tx.bytes));
    counter!(TUNNEL_RECEIVED, &peer).increment(now.udp_rx.bytes.saturating_sub(last.udp_rx.bytes));
}

pub fn tunnel_closed(peer: &str, slot: &str) {
    gauge!(TUNNEL_CONNECTIONS, "peer" => peer.to_string(), "slot" => slot.to_string()).set(0.0);
}

pub fn tunnel_reconnect(target: &str) {
    counter!(TUNNEL_RECONNECTS, "peer" => target.to_string()).increment(1);
}

pub fn tunnel_handshake_failed(reason: &'static str) {
    counter!(TUNNEL_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
}

pub fn tunnel_stream(cluster: &str, outcome: &'static str) {
    counter!(TUNNEL_STREAMS, "cluster" => cluster.to_string(), "outcome" => outcome).increment(1);
}

pub fn request(api: &'static str, elapsed: Duration) {
    counter!(REQUESTS, "api" => api).increment(1);
    histogram!(REQUEST_SECONDS, "api" => api).record(elapsed.as_secs_f64());
}

pub fn bytes_in(n: usize) {
    counter!(BYTES_IN).increment(n as u64);
}

pub fn bytes_out(n: usize) {
    counter!(BYTES_OUT).increment(n as u64);
}

pub fn connection_opened() {
    counter!(CONNECTIONS_TOTAL).increment(1);
    gauge!(CONNECTIONS).increment(1.0);
}

pub fn connection_refused(limit: &'static str) {
    counter!(CONNECTIONS_REFUSED, "limit" => limit).increment(1);
}

pub fn idle_closed() {
    counter!(IDLE_CLOSED).increment(1);
}

pub fn authorization(resource: &'static str, allowed: bool) {
    counter!(AUTHORIZATION, "resource" => resource, "decision" => if allowed { "allow" } else { "deny" }).increment(1);
}

pub fn admin_refused() {
    counter!(ADMIN_REFUSED).increment(1);
}

pub fn sasl_login(ok: bool) {
    counter!(SASL_LOGINS, "outcome" => if ok { "ok" } else { "refused" }).increment(1);
}

pub fn tls_handshake_failed(reason: &'static str) {
    counter!(TLS_FAILURES, "reason" => reason).increment(1);
}

pub fn connection_closed() {
    gauge!(CONNECTIONS).decrement(1.0);
}

pub fn protocol_error(kind: &'static str) {
    counter!(PROTOCOL_ERRORS, "kind" => kind).increment(1);
}

pub fn backend_connection_opened(cluster: &str) {
    gauge!(BACKEND_CONNECTIONS, "cluster" => cluster.to_string()).increment(1.0);
}

pub fn backend_connection_closed(cluster: &str) {
    gauge!(BACKEND_CONNECTIONS, "cluster" => cluster.to_string()).decrement(1.0);
}

pub fn backend_error(cluster: &str, kind: &'static str) {
    counter!(BACKEND_ERRORS, "cluster" => cluster.to_string(), "kind" => kind).increment(1);
}

pub fn backend_resent(cluster: &str, outcome: &'static str) {
    counter!(BACKEND_RESENDS, "cluster" => cluster.to_string(), "outcome" => outcome).increment(1);
}

pub fn fetch_read_ahead(outcome: &'static str) {
    counter!(FETCH_READ_AHEAD, "outcome" => outcome).increment(1);
}

/// A change in the bytes fetch read-ahead holds.
pub fn fetch_read_ahead_held(delta: i64) {
    gauge!(FETCH_READ_AHEAD_HELD).increment(delta as f64);
}

/// A change in the bytes set aside for requests still arriving.
pub fn request_buffers_reserved(delta: i64) {
    gauge!(REQUEST_BUFFERS_RESERVED).increment(delta as f64);
}

pub fn metadata_refreshed(cluster: &str) {
    counter!(METADATA_REFRESHES, "cluster" => cluster.to_string()).increment(1);
}

pub fn cluster_up(cluster: &str, up: bool) {
    gauge!(CLUSTER_UP, "cluster" => cluster.to_string()).set(if up { 1.0 } else { 0.0 });
}

/// One plugin's call metrics, looked up once: a call then costs no label
/// building or registry lookup.
pub struct PluginCalls {
    calls: metrics::Counter,
    seconds: metrics::Histogram,
}

impl PluginCalls {
    pub fn new(plugin: &str) -> Self {
        PluginCalls {
            calls: counter!(PLUGIN_CALLS, "plugin" => plugin.to_string()),
            seconds: histogram!(PLUGIN_SECONDS, "plugin" => plugin.to_string()),
        }
    }

    pub fn record(&self, elapsed: Duration) {
        self.calls.increment(1);
        self.seconds.record(elapsed.as_secs_f64());
    }
}

pub fn plugin_trap(plugin: &str) {
    counter!(PLUGIN_TRAPS, "plugin" => plugin.to_string()).increment(1);
}

pub fn plugin_rejected(plugin: &str) {
    counter!(PLUGIN_REJECTED, "plugin" => plugin.to_string()).increment(1);
}

pub fn plugin_changed(produce: bool) {
    counter!(PLUGIN_CHANGED, "direction" => if produce { "produce" } else { "fetch" }).increment(1);
}

/// A record filter's verdicts, counted per record; handles looked up once.
pub struct PluginRecords {
    passed: metrics::Counter,
    changed: metrics::Counter,
    dropped: metrics::Counter,
    fanned_out: metrics::Counter,
}

/// How many records of a batch got each verdict.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verdicts {
    pub passed: u64,
    pub changed: u64,
    pub dropped: u64,
    pub fanned_out: u64,
}

impl PluginRecords {
    pub fn new(plugin: &str) -> Self {
        let verdict = |v: &'static str| counter!(PLUGIN_RECORDS, "plugin" => plugin.to_string(), "verdict" => v);
        PluginRecords {
            passed: verdict("passed"),
            changed: verdict("changed"),
            dropped: verdict("dropped"),
            fanned_out: verdict("fanned_out"),
        }
    }

    pub fn record(&self, v: Verdicts) {
        for (counter, n) in [
            (&self.passed, v.passed),
            (&self.changed, v.changed),
            (&self.dropped, v.dropped),
            (&self.fanned_out, v.fanned_out),
        ] {
            if n > 0 {
                counter.increment(n);
            }
        }
    }
}

/// The counter a plugin names with the host's `count`.
pub fn plugin_counter(plugin: &str, name: &str) -> metrics::Counter {
    counter!(PLUGIN_COUNTER, "plugin" => plugin.to_string(), "name" => name.to_string())
}

//! The QUIC endpoints of the bridge, with quinn tuned for bulk Kafka traffic
//! over a WAN: flow-control windows sized for the bandwidth-delay product,
//! large UDP socket buffers, segmentation offload, many streams at once, and
//! keep-alives well below common NAT timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};

use super::frame::ALPN;
use super::TunnelConfig;

/// Streams (Kafka connections) one tunnel connection may carry at once.
const MAX_STREAMS: u32 = 4096;

/// quinn's transport settings from the config.
fn transport(config: &TunnelConfig) -> Result<TransportConfig, String> {
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(Duration::from_millis(config.idle_timeout_ms))
        .map_err(|e| format!("idle_timeout_ms: {e}"))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(Duration::from_millis(config.keep_alive_ms)));
    let stream = VarInt::from_u64(config.stream_window_bytes).map_err(|e| format!("stream_window_bytes: {e}"))?;
    let conn = VarInt::from_u64(config.connection_window_bytes).map_err(|e| format!("connection_window_bytes: {e}"))?;
    // One stream may fill a stream window; the connection's window bounds
    // all of them together, in each direction.
    t.stream_receive_window(stream);
    t.receive_window(conn);
    t.send_window(config.connection_window_bytes);
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.datagram_receive_buffer_size(None);
    // GSO where the kernel has it (quinn falls back by itself where not).
    t.enable_segmentation_offload(true);
    Ok(t)
}

/// A UDP socket with the configured buffer sizes (the kernel may cap them:
/// `net.core.rmem_max` / `wmem_max`).
fn socket(bind: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&bind.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The cloud side's endpoint: accepts connections from on-prem peers, who
/// must present a certificate signed by `client_ca`.
pub(super) fn server(config: &TunnelConfig, bind: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let tls = crate::tls::TlsConfig {
        cert: config.cert.clone(),
        key: config.key.clone(),
        client_ca: config.client_ca.clone(),
        client_auth: "required".into(),
        handshake_timeout_ms: config.handshake_timeout_ms,
    };
    let rustls = crate::tls::server_config(&tls).map_err(|(field, e)| anyhow::anyhow!("tunnel.{field}: {e}"))?;
    let mut rustls = (*rustls).clone();
    rustls.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: nothing is accepted before the handshake completes.
    rustls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(rustls).map_err(|e| anyhow::anyhow!("tunnel.cert: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(config).map_err(|e| anyhow::anyhow!("tunnel.{e}"))?));
    let socket = socket(bind, config.socket_buffer_bytes)
        .map_err(|e| anyhow::anyhow!("cannot listen on {bind} (UDP) for the tunnel: {e}"))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(endpoint)
}

/// The on-prem side's endpoint and the client config its connections use.
pub(super) fn client(config: &TunnelConfig) -> anyhow::Result<(quinn::Endpoint, quinn::ClientConfig)> {
    let rustls = client_tls(config).map_err(|(field, e)| anyhow::anyhow!("tunnel.{field}: {e}"))?;
    let crypto = QuicClientConfig::try_from(rustls).map_err(|e| anyhow::anyhow!("tunnel.ca: {e}"))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport(config).map_err(|e| anyhow::anyhow!("tunnel.{e}"))?));
    let bind: SocketAddr = ([0, 0, 0, 0, 0, 0, 0, 0], 0).into();
    let socket = socket(bind, config.socket_buffer_bytes)
        .or_else(|_| socket(([0, 0, 0, 0], 0).into(), config.socket_buffer_bytes))
        .map_err(|e| anyhow::anyhow!("cannot open a UDP socket for the tunnel: {e}"))?;
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, Arc::new(quinn::TokioRuntime))?;
    Ok((endpoint, client))
}

/// The rustls side of the on-prem client: its certificate, the CA it trusts.
pub(super) fn client_tls(config: &TunnelConfig) -> Result<rustls::ClientConfig, (&'static str, String)> {
    let backend = crate::backend::secure::BackendTls {
        ca: config.ca.clone().unwrap_or_default(),
        cert: Some(config.cert.clone()),
        key: Some(config.key.clone()),
        server_name: None,
    };
    let rustls = crate::backend::secure::client_config(&backend)?;
    let mut rustls = (*rustls).clone();
    rustls.alpn_protocols = vec![ALPN.to_vec()];
    rustls.enable_early_data = false;
    Ok(rustls)
}

/// Checks the settings quinn itself would refuse.
pub(super) fn check_transport(config: &TunnelConfig) -> Result<(), String> {
    transport(config).map(|_| ())
}

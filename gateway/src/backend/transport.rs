//! How Causeway reaches a backend broker.
//!
//! A [`Connector`] turns a broker address into a byte stream. Plain TCP is the only
//! transport today; a tunnel to a remote site is one more implementation, and the
//! connection layer above never knows the difference.

use std::io;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

/// Socket buffer size asked for on backend connections (the kernel may cap it).
const SOCKET_BUFFER: u32 = 4 * 1024 * 1024;

/// A bidirectional byte stream to a broker.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A stream with how long its login lasts, if the broker limits it.
pub type Connected = (Box<dyn Stream>, Option<Duration>);

/// Opens streams to brokers by address (`HOST:PORT`).
pub trait Connector: Send + Sync + 'static {
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<Box<dyn Stream>>>;

    /// Like [`Connector::connect`], with how long the connection's login
    /// lasts when the broker limits it (KIP-368's session lifetime).
    fn connect_for(&self, addr: String) -> BoxFuture<'static, io::Result<Connected>> {
        let connecting = self.connect(addr);
        Box::pin(async move { Ok((connecting.await?, None)) })
    }
}

/// Direct TCP connections with a connect timeout and `TCP_NODELAY`.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    pub timeout: Duration,
}

impl Connector for TcpConnector {
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<Box<dyn Stream>>> {
        let timeout = self.timeout;
        Box::pin(async move {
            let connect = async {
                let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to nothing"));
                for sock_addr in tokio::net::lookup_host(&addr).await? {
                    let socket = if sock_addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                    // Room for several produce requests in flight, so a session
                    // rarely waits for the broker to read before it can go on.
                    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
                    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
                    match socket.connect(sock_addr).await {
                        Ok(stream) => return Ok(stream),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            };
            let stream: TcpStream = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {addr} took longer than {timeout:?}"),
                    )
                })??;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    }
}

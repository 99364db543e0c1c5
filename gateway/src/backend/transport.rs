//! How Causeway reaches a backend broker.
//!
//! A [`Connector`] turns a broker address into a byte stream. Plain TCP is the only
//! transport today; a tunnel to a remote site is one more implementation, and the
//! connection layer above never knows the difference.

use std::io;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A bidirectional byte stream to a broker.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Opens streams to brokers by address (`HOST:PORT`).
pub trait Connector: Send + Sync + 'static {
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<Box<dyn Stream>>>;
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
            let stream = tokio::time::timeout(timeout, TcpStream::connect(&addr))
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

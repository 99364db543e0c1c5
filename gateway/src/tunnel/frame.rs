//! What the two ends of a tunnel say to each other besides Kafka bytes.
//!
//! Every message is a 4-byte big-endian length and that many bytes of JSON,
//! at most [`MAX_FRAME`]. The on-prem side opens the first stream of each
//! connection and sends [`Hello`]; the cloud side answers [`Welcome`]; that
//! stream then carries [`Control`] messages. Every later stream is opened by
//! the cloud side and starts with [`Open`], answered by [`Opened`]; after a
//! successful `Opened` the stream carries one Kafka connection's bytes, both
//! ways, untouched.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version in [`Hello`].
pub const VERSION: u32 = 1;
/// The ALPN name both sides insist on.
pub const ALPN: &[u8] = b"causeway-tunnel/1";
/// Largest message accepted, in bytes.
pub const MAX_FRAME: usize = 16 * 1024;
/// Most clusters one connection may name.
const MAX_CLUSTERS: usize = 256;
/// Longest cluster name or broker address accepted.
const MAX_NAME: usize = 512;

/// On-prem to cloud, first thing on a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub version: u32,
    /// The cluster names this side exposes.
    pub clusters: Vec<String>,
    /// Which of the on-prem side's connections this is (`ADDR#N`), for
    /// status and metrics.
    pub slot: String,
}

/// Cloud to on-prem: which of the clusters it takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    pub accepted: Vec<String>,
    /// Cluster name and why it was refused.
    pub refused: Vec<(String, String)>,
}

/// Either way on the first stream after [`Welcome`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Control {
    /// The sender is shutting down: open no new streams on this connection.
    Drain,
}

/// Cloud to on-prem, first thing on every later stream: connect this stream
/// to a broker of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Open {
    pub cluster: String,
    /// The broker, `HOST:PORT`, as the on-prem side reaches it.
    pub addr: String,
}

/// On-prem to cloud: whether the stream is now connected to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opened {
    /// `None` when connected; otherwise why not.
    pub error: Option<String>,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream ended before a whole message arrived")]
    Ended,
    #[error("message of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLong(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(std::io::Error),
}

/// Checks what serde cannot: bounds on counts and lengths.
pub trait Bounded {
    fn check(&self) -> Result<(), String>;
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("{what} of {} bytes; expected 1..={MAX_NAME}", name.len()));
    }
    Ok(())
}

impl Bounded for Hello {
    fn check(&self) -> Result<(), String> {
        if self.clusters.len() > MAX_CLUSTERS {
            return Err(format!("{} clusters; at most {MAX_CLUSTERS}", self.clusters.len()));
        }
        for c in &self.clusters {
            check_name("cluster name", c)?;
        }
        check_name("slot", &self.slot)
    }
}

impl Bounded for Welcome {
    fn check(&self) -> Result<(), String> {
        if self.accepted.len() + self.refused.len() > MAX_CLUSTERS {
            return Err("too many clusters".into());
        }
        Ok(())
    }
}

impl Bounded for Control {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Bounded for Open {
    fn check(&self) -> Result<(), String> {
        check_name("cluster name", &self.cluster)?;
        check_name("broker address", &self.addr)
    }
}

impl Bounded for Opened {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// One message from its JSON body (without the length).
pub fn parse<T: DeserializeOwned + Bounded>(body: &[u8]) -> Result<T, FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLong(body.len()));
    }
    let message: T = serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    message.check().map_err(FrameError::Malformed)?;
    Ok(message)
}

/// One message from the front of `buf` (length first), with the bytes it
/// took; `Ended` when `buf` holds less than a whole message.
pub fn decode<T: DeserializeOwned + Bounded>(buf: &[u8]) -> Result<(T, usize), FrameError> {
    let Some((len, rest)) = buf.split_first_chunk::<4>() else { return Err(FrameError::Ended) };
    let len = u32::from_be_bytes(*len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    let body = rest.get(..len).ok_or(FrameError::Ended)?;
    Ok((parse(body)?, 4 + len))
}

/// One message as it goes on the wire, length first.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail; an empty body would be
    // refused by the peer rather than misread.
    let body = serde_json::to_vec(message).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads one message, never allocating more than [`MAX_FRAME`] for it.
pub async fn read<T, R>(stream: &mut R) -> Result<T, FrameError>
where
    T: DeserializeOwned + Bounded,
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(ended)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(ended)?;
    parse(&body)
}

fn ended(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Ended
    } else {
        FrameError::Io(e)
    }
}

/// Writes one message.
pub async fn write<T: Serialize, W: AsyncWrite + Unpin>(stream: &mut W, message: &T) -> std::io::Result<()> {
    stream.write_all(&encode(message)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip() {
        let hello = Hello { version: VERSION, clusters: vec!["onprem".into()], slot: "cloud:4433#0".into() };
        let bytes = encode(&hello);
        let back: Hello = read(&mut bytes.as_slice()).await.expect("a hello");
        assert_eq!(back, hello);
        let open = Open { cluster: "onprem".into(), addr: "10.0.0.5:9092".into() };
        let back: Open = read(&mut encode(&open).as_slice()).await.expect("an open");
        assert_eq!(back, open);
        let drain: Control = read(&mut encode(&Control::Drain).as_slice()).await.expect("a control");
        assert_eq!(drain, Control::Drain);
    }

    #[tokio::test]
    async fn hostile_lengths_are_refused_before_reading() {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert!(matches!(read::<Open, _>(&mut bytes.as_slice()).await, Err(FrameError::TooLong(_))));
    }

    #[tokio::test]
    async fn short_and_malformed_messages_are_errors() {
        let full = encode(&Open { cluster: "c".into(), addr: "h:1".into() });
        for cut in 0..full.len() {
            assert!(read::<Open, _>(&mut &full[..cut]).await.is_err(), "cut at {cut}");
        }
        let mut junk = 5u32.to_be_bytes().to_vec();
        junk.extend_from_slice(b"nope!");
        assert!(matches!(read::<Open, _>(&mut junk.as_slice()).await, Err(FrameError::Malformed(_))));
        // Unknown fields, empty names and too many clusters are refused.
        assert!(parse::<Open>(br#"{"cluster":"c","addr":"h:1","extra":1}"#).is_err());
        assert!(parse::<Open>(br#"{"cluster":"","addr":"h:1"}"#).is_err());
        let many = Hello { version: 1, clusters: vec!["c".into(); 300], slot: "s".into() };
        assert!(parse::<Hello>(&encode(&many)[4..]).is_err());
    }

    #[test]
    fn decode_takes_one_message_off_the_front() {
        let mut buf = encode(&Open { cluster: "c".into(), addr: "h:1".into() });
        let first = buf.len();
        buf.extend(encode(&Control::Drain));
        let (open, used) = decode::<Open>(&buf).expect("an open");
        assert_eq!((open.cluster.as_str(), used), ("c", first));
        assert_eq!(decode::<Control>(&buf[used..]).expect("a control").0, Control::Drain);
        assert!(matches!(decode::<Open>(&buf[..first - 1]), Err(FrameError::Ended)));
        assert!(matches!(decode::<Open>(&[0xff; 8]), Err(FrameError::TooLong(_))));
    }
}

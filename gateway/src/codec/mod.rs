//! The wire codec, free of I/O: frames, request headers, response envelopes.
//!
//! Everything here works on byte buffers so it can be tested and fuzzed without a
//! socket. A Kafka frame is a 4-byte big-endian length followed by that many bytes;
//! a request starts with `api_key: i16, api_version: i16, correlation_id: i32`, a
//! response with `correlation_id: i32`. Causeway keeps frames as bytes and decodes a
//! body only where routing or rewriting needs it.

pub mod batches;
pub mod versions;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;
/// `api_key`, `api_version` and `correlation_id`: present in every request header version.
pub const MIN_REQUEST_HEADER: usize = 8;

/// What can be wrong with bytes that came off the wire.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame length {0} is negative")]
    NegativeLength(i32),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame of {0} bytes is too short for a request header")]
    ShortHeader(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("malformed {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: anyhow::Error,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

/// Takes one whole frame (without its length prefix) off the front of `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete. The declared length is checked
/// against `max` before anything is reserved, so a hostile length costs nothing.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, CodecError> {
    if buf.len() < LENGTH_PREFIX {
        return Ok(None);
    }
    let declared = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if declared < 0 {
        return Err(CodecError::NegativeLength(declared));
    }
    let len = declared as usize;
    if len > max {
        return Err(CodecError::FrameTooLarge { len, max });
    }
    if buf.len() < LENGTH_PREFIX + len {
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX);
    Ok(Some(buf.split_to(len)))
}

/// How many bytes the frame at the front of `buf` still needs, once its length is
/// known and valid; used to size reads without trusting the peer beyond `max`.
pub fn pending_frame_len(buf: &[u8], max: usize) -> Option<usize> {
    if buf.len() < LENGTH_PREFIX {
        return None;
    }
    let declared = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if declared < 0 || declared as usize > max {
        return None;
    }
    Some(LENGTH_PREFIX + declared as usize)
}

/// A request frame with its header decoded and its body left as bytes.
#[derive(Clone)]
pub struct Request {
    pub api_key: ApiKey,
    pub header: RequestHeader,
    /// The whole frame, header included, as the client sent it.
    pub frame: Bytes,
    /// Where the body starts within `frame`.
    pub body_offset: usize,
}

/// The body stays out of logs and panics: it may hold a SASL PLAIN password.
impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("api_key", &self.api_key)
            .field("header", &self.header)
            .field("bytes", &self.frame.len())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// Parses the header of a request frame. Never panics on short or hostile input.
    pub fn parse(frame: Bytes) -> Result<Self, CodecError> {
        if frame.len() < MIN_REQUEST_HEADER {
            return Err(CodecError::ShortHeader(frame.len()));
        }
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let api_key = ApiKey::try_from(key).map_err(|()| CodecError::UnknownApiKey(key))?;
        let header_version = api_key.request_header_version(version);
        let mut cursor = frame.clone();
        let (header, body_offset) = match RequestHeader::decode(&mut cursor, header_version) {
            Ok(header) => (header, frame.len() - cursor.remaining()),
            // An ApiVersions request of a version newer than any known may have a
            // header laid out differently; its first eight bytes are enough to answer
            // UNSUPPORTED_VERSION, which is how clients learn what to use.
            Err(_) if api_key == ApiKey::ApiVersions => {
                let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                let header = RequestHeader::default()
                    .with_request_api_key(key)
                    .with_request_api_version(version)
                    .with_correlation_id(correlation_id);
                (header, frame.len())
            }
            Err(source) => {
                return Err(CodecError::Malformed {
                    what: "request header",
                    source,
                })
            }
        };
        Ok(Self {
            api_key,
            header,
            frame,
            body_offset,
        })
    }

    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }

    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }

    /// Decodes the body as `T` at the request's version.
    pub fn decode<T: Decodable>(&self, what: &'static str) -> Result<T, CodecError> {
        let mut body = self.frame.slice(self.body_offset..);
        T::decode(&mut body, self.version()).map_err(|source| CodecError::Malformed { what, source })
    }

    /// The response header version the client expects for this request.
    pub fn response_header_version(&self) -> i16 {
        self.api_key.response_header_version(self.version())
    }

    /// A new frame with this request's header (correlation id left for the backend
    /// connection to set) and `body` encoded at the same version.
    pub fn reencode<T: Encodable>(&self, body: &T, what: &'static str) -> Result<Bytes, CodecError> {
        let mut buf = BytesMut::with_capacity(self.body_offset + 64);
        let header_version = self.api_key.request_header_version(self.version());
        self.header
            .encode(&mut buf, header_version)
            .map_err(|source| CodecError::Encode { what, source })?;
        body.encode(&mut buf, self.version())
            .map_err(|source| CodecError::Encode { what, source })?;
        Ok(buf.freeze())
    }
}

/// Encodes a request the gateway makes itself (metadata refresh, coordinator lookup).
pub fn encode_request<T: Encodable>(
    api_key: ApiKey,
    version: i16,
    client_id: &'static str,
    body: &T,
) -> Result<Bytes, CodecError> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(0)
        .with_client_id(Some(client_id.into()));
    let mut buf = BytesMut::with_capacity(128);
    header
        .encode(&mut buf, api_key.request_header_version(version))
        .map_err(|source| CodecError::Encode {
            what: "request header",
            source,
        })?;
    body.encode(&mut buf, version)
        .map_err(|source| CodecError::Encode {
            what: "request",
            source,
        })?;
    Ok(buf.freeze())
}

/// A response frame from a backend: `correlation_id`, header tagged fields (header
/// v1), then the body.
#[derive(Debug, Clone)]
pub struct Response {
    pub frame: Bytes,
}

impl Response {
    /// The response body, after the header of the given version.
    pub fn body(&self, header_version: i16) -> Result<Bytes, CodecError> {
        let mut cursor = self.frame.clone();
        ResponseHeader::decode(&mut cursor, header_version).map_err(|source| {
            CodecError::Malformed {
                what: "response header",
                source,
            }
        })?;
        Ok(cursor)
    }

    /// Decodes the body as `T` at `version`.
    pub fn decode<T: Decodable>(
        &self,
        header_version: i16,
        version: i16,
        what: &'static str,
    ) -> Result<T, CodecError> {
        let mut body = self.body(header_version)?;
        T::decode(&mut body, version).map_err(|source| CodecError::Malformed { what, source })
    }

    /// Everything after the correlation id: what goes back to a client behind its own
    /// correlation id when the response passes through untouched.
    pub fn after_correlation_id(&self) -> Bytes {
        if self.frame.len() < 4 {
            return Bytes::new();
        }
        self.frame.slice(4..)
    }
}

/// Encodes a response body for a client: the header's tagged fields (empty, for
/// header v1) followed by `body`. The correlation id is added when it is written.
pub fn encode_response<T: Encodable>(
    body: &T,
    version: i16,
    header_version: i16,
    what: &'static str,
) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::with_capacity(256);
    if header_version >= 1 {
        buf.put_u8(0);
    }
    body.encode(&mut buf, version)
        .map_err(|source| CodecError::Encode { what, source })?;
    Ok(buf.freeze())
}

/// Reads the correlation id at the front of a response frame.
pub fn response_correlation_id(frame: &[u8]) -> Option<i32> {
    frame
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Writes a request frame's length prefix and its first eight header bytes with
/// `correlation_id` in place of the client's; the rest of the frame follows as is.
pub fn request_prefix(frame: &[u8], correlation_id: i32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&(frame.len() as u32).to_be_bytes());
    out[4..8].copy_from_slice(&frame[..4]);
    out[8..12].copy_from_slice(&correlation_id.to_be_bytes());
    out
}

/// The length prefix and correlation id in front of a response body of `rest_len` bytes.
pub fn response_prefix(correlation_id: i32, rest_len: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&((rest_len + 4) as u32).to_be_bytes());
    out[4..].copy_from_slice(&correlation_id.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::MetadataRequest;

    fn frame_of(payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(payload.len() as u32);
        b.put_slice(payload);
        b
    }

    #[test]
    fn splits_whole_frames_and_waits_for_partial_ones() {
        let mut buf = frame_of(b"hello");
        buf.put_slice(&[0, 0, 0, 3, b'a']);
        let first = split_frame(&mut buf, 100).expect("valid").expect("complete");
        assert_eq!(&first[..], b"hello");
        assert!(split_frame(&mut buf, 100).expect("valid").is_none());
        buf.put_slice(b"bc");
        let second = split_frame(&mut buf, 100).expect("valid").expect("complete");
        assert_eq!(&second[..], b"abc");
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_hostile_lengths_before_buffering() {
        let mut buf = BytesMut::from(&[0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            split_frame(&mut buf, 1024),
            Err(CodecError::FrameTooLarge { len: 0x7fff_ffff, max: 1024 })
        ));
        let mut neg = BytesMut::from(&[0xff, 0xff, 0xff, 0xfe][..]);
        assert!(matches!(
            split_frame(&mut neg, 1024),
            Err(CodecError::NegativeLength(-2))
        ));
    }

    #[test]
    fn parses_header_and_reports_unknown_keys() {
        let body = MetadataRequest::default();
        let frame = encode_request(ApiKey::Metadata, 9, "t", &body).expect("encode");
        let req = Request::parse(frame.clone()).expect("parse");
        assert_eq!(req.api_key, ApiKey::Metadata);
        assert_eq!(req.version(), 9);
        assert_eq!(req.header.client_id.as_deref(), Some("t"));
        let decoded: MetadataRequest = req.decode("metadata").expect("decode");
        assert_eq!(decoded, body);

        let mut unknown = BytesMut::from(&frame[..]);
        unknown[0] = 0x7f;
        assert!(matches!(
            Request::parse(unknown.freeze()),
            Err(CodecError::UnknownApiKey(_))
        ));
        assert!(matches!(
            Request::parse(Bytes::from_static(&[0, 3, 0])),
            Err(CodecError::ShortHeader(3))
        ));
    }

    #[test]
    fn a_metadata_request_declaring_two_billion_topics_is_an_error_not_an_abort() {
        // Metadata v0: api key 3, version 0, correlation id, client id (null), then the
        // topic array length 0x7fffffff and nothing else.
        let frame = Bytes::from_static(&[0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]);
        let req = Request::parse(frame).expect("header is fine");
        let err = req.decode::<MetadataRequest>("metadata").expect_err("must fail");
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn prefixes_carry_lengths_and_correlation_ids() {
        let frame = [0u8, 3, 0, 9, 0, 0, 0, 7, 1, 2];
        let p = request_prefix(&frame, 42);
        assert_eq!(&p[..4], &10u32.to_be_bytes());
        assert_eq!(&p[4..8], &[0, 3, 0, 9]);
        assert_eq!(&p[8..], &42i32.to_be_bytes());
        let r = response_prefix(5, 3);
        assert_eq!(&r[..4], &7u32.to_be_bytes());
        assert_eq!(response_correlation_id(&r[4..]), Some(5));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(frame)) = split_frame(&mut buf, 4096) {
                if let Ok(req) = Request::parse(frame.freeze()) {
                    let _ = versions::decode_any_request(&req);
                }
            }
            if let Ok(req) = Request::parse(Bytes::from(data)) {
                let _ = versions::decode_any_request(&req);
            }
        }
    }
}

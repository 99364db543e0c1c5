//! Client bytes: framing, header parsing and body decoding of every API must
//! return errors, never panic or abort, whatever arrives.
#![no_main]

use bytes::BytesMut;
use causeway::codec::{split_frame, versions, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As a stream: frames split off the front, each parsed and decoded.
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = split_frame(&mut buf, 1 << 20) {
        if let Ok(req) = Request::parse(frame.freeze()) {
            let _ = versions::decode_any_request(&req);
        }
    }
    // As one frame body.
    if let Ok(req) = Request::parse(bytes::Bytes::copy_from_slice(data)) {
        if let Ok(kind) = versions::decode_any_request(&req) {
            // Whatever decodes must encode again at the same version.
            let mut out = BytesMut::new();
            let _ = kind.encode(&mut out, req.version());
        }
    }
});

//! Backend bytes: the responses Causeway decodes and rewrites must never panic,
//! and a rewritten response must encode.
#![no_main]

use bytes::Bytes;
use causeway::proxy::rewrite;
use kafka_protocol::messages::{
    DescribeClusterResponse, FindCoordinatorResponse, MetadataResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let gw = causeway::proxy::Gateway::for_tests();
    let body = Bytes::copy_from_slice(rest);
    match selector % 3 {
        0 => {
            let version = i16::from(selector / 3 % 13);
            if let Ok(mut m) = MetadataResponse::decode(&mut body.clone(), version) {
                rewrite::metadata(&mut m, &gw, None);
                let mut out = bytes::BytesMut::new();
                let _ = m.encode(&mut out, version);
            }
        }
        1 => {
            let version = i16::from(selector / 3 % 7);
            if let Ok(mut m) = FindCoordinatorResponse::decode(&mut body.clone(), version) {
                rewrite::find_coordinator(&mut m, &gw, version);
                let mut out = bytes::BytesMut::new();
                let _ = m.encode(&mut out, version);
            }
        }
        _ => {
            let version = i16::from(selector / 3 % 2);
            if let Ok(mut m) = DescribeClusterResponse::decode(&mut body.clone(), version) {
                rewrite::describe_cluster(&mut m, &gw, None);
                let mut out = bytes::BytesMut::new();
                let _ = m.encode(&mut out, version);
            }
        }
    }
});

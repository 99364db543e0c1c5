//! The hybrid bridge's own messages (hello, welcome, control, open, opened):
//! whatever a peer sends, decoding answers a message or an error; it never
//! panics, never takes more than the input holds, and what it accepts
//! survives a round trip.
#![no_main]

use causeway::tunnel::frame::{self, Control, Hello, Open, Opened, Welcome};
use libfuzzer_sys::fuzz_target;

fn check<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + frame::Bounded + PartialEq + std::fmt::Debug,
{
    if let Ok((message, used)) = frame::decode::<T>(data) {
        assert!(used <= data.len() && used >= 4);
        let again = frame::encode(&message);
        let (back, _) = frame::decode::<T>(&again).expect("what was accepted decodes again");
        assert_eq!(back, message);
    }
    let _ = frame::parse::<T>(data);
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    match choice % 5 {
        0 => check::<Hello>(rest),
        1 => check::<Welcome>(rest),
        2 => check::<Control>(rest),
        3 => check::<Open>(rest),
        _ => check::<Opened>(rest),
    }
});

//! Client SASL tokens: whatever a client sends in SaslAuthenticate (PLAIN
//! tokens, SCRAM client-first and client-final messages), a login answers,
//! refuses or goes on; it never panics, and garbage never logs anyone in.
#![no_main]

use std::sync::OnceLock;

use causeway::sasl::{Authenticator, Login, Step};
use libfuzzer_sys::fuzz_target;

fn auth() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| Authenticator::with_user("user", "pencil"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let mechanism = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI"][usize::from(choice % 4)];
    let mut login = Login::default();
    login.handshake(auth(), mechanism);
    // Tokens separated by 0xFF (never in a UTF-8 SASL message).
    for token in rest.split(|&b| b == 0xff).take(4) {
        if let Step::Done(..) = login.authenticate(auth(), token) {
            // Only a token carrying the password can succeed.
            assert!(token.windows(6).any(|w| w == b"pencil") || token.starts_with(b"c="));
        }
    }
});

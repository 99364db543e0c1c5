//! SaslHandshake and SaslAuthenticate, answered by the connection itself
//! (see [`crate::sasl`] for the mechanisms).

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::ProxyError;
use crate::codec::{encode_response, Request};
use crate::sasl::{Authenticator, Login, Step};
use crate::telemetry;

const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const UNSUPPORTED_VERSION: i16 = 35;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// Answers one SASL request: the answer's bytes, and whether the client was
/// refused (the connection closes once the answer is written).
pub fn step(auth: &Authenticator, login: &mut Login, req: &Request) -> Result<(Bytes, bool), ProxyError> {
    let (version, header) = (req.version(), req.response_header_version());
    let offered = crate::codec::versions::audited(req.api_key).is_some_and(|a| (a.min..=a.max).contains(&version));
    if !offered {
        return Err(ProxyError::Unsupported { api: super::session::api_key_name(req.api_key), version });
    }
    if req.api_key == ApiKey::SaslHandshake && version == 0 {
        // v0 would carry the SASL tokens outside Kafka's framing.
        telemetry::sasl_login(false);
        let answer = SaslHandshakeResponse::default()
            .with_error_code(UNSUPPORTED_VERSION)
            .with_mechanisms(auth.names().into_iter().map(StrBytes::from_string).collect());
        return Ok((encode_response(&answer, version, header, "SaslHandshake response")?, true));
    }
    if req.api_key == ApiKey::SaslHandshake {
        let body: SaslHandshakeRequest = req.decode("SaslHandshake request")?;
        let ok = login.handshake(auth, &body.mechanism);
        let answer = SaslHandshakeResponse::default()
            .with_error_code(if ok { 0 } else { UNSUPPORTED_SASL_MECHANISM })
            .with_mechanisms(auth.names().into_iter().map(StrBytes::from_string).collect());
        if !ok {
            telemetry::sasl_login(false);
            // Debug-quoted: the name is the client's, and may hold anything.
            tracing::info!(mechanism = ?body.mechanism.as_str(), "SASL mechanism not offered");
        }
        return Ok((encode_response(&answer, version, header, "SaslHandshake response")?, !ok));
    }
    let body: SaslAuthenticateRequest = req.decode("SaslAuthenticate request")?;
    let (answer, refused) = match login.authenticate(auth, &body.auth_bytes) {
        Step::Continue(reply) => (SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(reply)), false),
        Step::Done(reply, lifetime_ms) => {
            telemetry::sasl_login(true);
            tracing::debug!(principal = ?login.principal(), "SASL login");
            (
                SaslAuthenticateResponse::default()
                    .with_auth_bytes(Bytes::from(reply))
                    .with_session_lifetime_ms(lifetime_ms),
                false,
            )
        }
        Step::Failed(why) => {
            telemetry::sasl_login(false);
            tracing::info!(error = %why, "SASL login refused");
            let code = if why.contains("before a successful SaslHandshake") { ILLEGAL_SASL_STATE } else { SASL_AUTHENTICATION_FAILED };
            (
                SaslAuthenticateResponse::default()
                    .with_error_code(code)
                    .with_error_message(Some(StrBytes::from_string(why))),
                true,
            )
        }
    };
    Ok((encode_response(&answer, version, header, "SaslAuthenticate response")?, refused))
}

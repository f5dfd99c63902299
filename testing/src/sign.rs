//! Stripe's webhook signature, computed the way Stripe computes it, so that a test can sign
//! the events it sends to an endpoint under test.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The `Stripe-Signature` header value for `body` sent at `timestamp` (Unix seconds):
/// `t=<timestamp>,v1=<hex>`, where the signature is HMAC-SHA256 of `"{timestamp}.{body}"`
/// keyed with the whole endpoint secret (`whsec_...` included), as Stripe signs.
///
/// The server signs every event it delivers with it; a test can sign its own events
/// (or forge one with another secret) the same way.
///
/// ```
/// let header = resilient_http_testing::sign("whsec_test_secret", 1_700_000_000, br#"{"id":"evt_1"}"#);
/// assert!(header.starts_with("t=1700000000,v1="));
/// assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
/// ```
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", signature(secret, timestamp, body))
}

/// The hex `v1` signature alone.
fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length (longer ones are hashed first): this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently of this code, with OpenSSL:
    ///
    /// ```sh
    /// printf '%s' '1700000000.{"id":"evt_1","object":"event"}' \
    ///   | openssl dgst -sha256 -hmac 'whsec_test_secret'
    /// ```
    const OPENSSL: &str = "0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";

    #[test]
    fn the_signature_matches_openssl() {
        let body = br#"{"id":"evt_1","object":"event"}"#;
        assert_eq!(
            sign("whsec_test_secret", 1_700_000_000, body),
            format!("t=1700000000,v1={OPENSSL}")
        );
    }

    #[test]
    fn the_timestamp_the_body_and_the_secret_each_change_the_signature() {
        let base = sign("whsec_a", 1, b"{}");
        assert_ne!(base, sign("whsec_b", 1, b"{}"));
        assert_ne!(base, sign("whsec_a", 2, b"{}"));
        assert_ne!(base, sign("whsec_a", 1, b"{ }"));
        // Signed as text: a negative timestamp is still well defined.
        assert!(sign("whsec_a", -5, b"").starts_with("t=-5,v1="));
    }
}

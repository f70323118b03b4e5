//! # herald-custom-channel — a generic JSON webhook channel (kind `webhook.json`)
//!
//! An example of a **third-party** Herald channel: it lives outside `channels/`, depends only
//! on the `herald-channel` SDK, and registers itself with `inventory`. Herald's own code is not
//! changed; a binary that links this crate (`src/main.rs`) simply knows one more kind.
//!
//! For every delivery it makes one `POST <url>` with a JSON body (see [`Payload`]), an
//! `Idempotency-Key: <message id>.<delivery id>` header (stable across retries, so the
//! receiver can de-duplicate), and, when a `secret` is configured,
//! `X-Herald-Signature: sha256=<hex HMAC-SHA256(secret, body)>`. The answer's HTTP status is
//! mapped to a classified error in one place, [`classify`].
//!
//! ```toml
//! [channels.hook]
//! kind = "webhook.json"
//! url = "https://example.com/herald"     # required, http or https
//! timeout = "10s"                        # optional, humantime
//! secret = "…"                           # optional: sign the body
//! headers = { Authorization = "Bearer …" } # optional extra headers
//! ```
//!
//! Invariants: the channel never retries, sleeps or follows redirects (the dispatcher owns
//! retries; a redirect would carry the signature and headers to another address). Header
//! values, the secret and the URL's path/query (webhook URLs often embed a token) never
//! appear in `Debug` output or in errors.
//!
//! The crate has the layout every channel crate has (`channels/sdk/README.md`): this file
//! declares the modules and registers the kind, `common.rs` holds what the family's
//! providers share (headers, signature, classification), `json.rs` is the provider, and
//! `testing.rs` (cargo feature `testing`) is a local webhook receiver for tests.

use herald_channel::{AddressKind, ChannelDescriptor};

mod common;
mod json;
#[cfg(feature = "testing")]
pub mod testing;

pub use common::{
    classify, idempotency_key, verify_signature, IDEMPOTENCY_HEADER, REQUEST_ID_HEADER,
    SIGNATURE_HEADER, USER_AGENT,
};
pub use json::{build, MessagePayload, Payload, WebhookChannel};

/// The channel kind this crate registers.
pub const KIND: &str = "webhook.json";

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: KIND,
        summary: "JSON POST to an HTTP endpoint (signed with HMAC-SHA256 when `secret` is set)",
        // The receiver's user id is all a webhook needs: every receiver gets a POST.
        address: AddressKind::None,
        presence: false,
        build: json::build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_as_a_provider_channel() {
        let d = herald_channel::find(KIND).expect("webhook.json is registered");
        assert_eq!(d.address, AddressKind::None);
        assert!(!d.presence);
        assert_eq!(d.family(), "webhook");
    }
}

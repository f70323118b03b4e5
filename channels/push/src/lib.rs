//! Herald's push channels, one provider per file: `push.fcm` (Firebase Cloud Messaging HTTP
//! v1), `push.apns` (Apple Push Notification service, HTTP/2) and `push.webpush` (RFC 8030
//! with VAPID, RFC 8292, and aes128gcm payload encryption, RFC 8291).
//!
//! Every kind sends to the receiver's registered devices of its platform
//! ([`herald_channel::AddressKind::Device`], `Outgoing::devices`) and reports dead ones
//! through `Outgoing::dead_devices`; the core deactivates them.
//!
//! FCM access tokens and APNs provider tokens are shared by every instance and node with the
//! same credentials, through the core's shared cache (`token.rs`): one token per service
//! account or APNs key for the whole cluster.
//!
//! Layout (`channels/sdk/README.md`): this file registers the kinds and the `webpush`
//! device check; `common.rs` holds what the providers share (content, outcomes,
//! configuration helpers); `token.rs` is the FCM/APNs token cache; with the `testing`
//! feature, `testing` has local stand-ins for Google, Apple and a push service.

use herald_channel::{AddressKind, ChannelDescriptor, DeviceCheck};

mod apns;
mod common;
mod fcm;
#[cfg(feature = "testing")]
pub mod testing;
mod token;
mod webpush;

/// Firebase Cloud Messaging, HTTP v1.
pub const KIND_FCM: &str = "push.fcm";
/// Apple Push Notification service, HTTP/2 with token authentication.
pub const KIND_APNS: &str = "push.apns";
/// Web Push (RFC 8030) with VAPID and aes128gcm.
pub const KIND_WEBPUSH: &str = "push.webpush";

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: KIND_FCM,
        summary: "Firebase Cloud Messaging (HTTP v1) push notifications",
        address: AddressKind::Device("fcm"),
        presence: false,
        build: fcm::build,
    }
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: KIND_APNS,
        summary: "Apple Push Notification service (HTTP/2, token authentication)",
        address: AddressKind::Device("apns"),
        presence: false,
        build: apns::build,
    }
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: KIND_WEBPUSH,
        summary: "Web Push (RFC 8030) with VAPID and aes128gcm payload encryption",
        address: AddressKind::Device("webpush"),
        presence: false,
        build: webpush::build,
    }
}

// A subscription `send` could not encrypt for is refused at registration, by the same
// parser `send` uses.
herald_channel::inventory::submit! {
    DeviceCheck { platform: "webpush", check: webpush::check_subscription }
}

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

mod apns;
mod fcm;
mod token;
mod webpush;

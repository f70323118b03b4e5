//! # herald-channel-sms — Herald's SMS channels
//!
//! One provider per file, each registered with `inventory` under its kind:
//!
//! | kind | file | vendor API |
//! |---|---|---|
//! | [`KIND_ALIYUN`] (`sms.aliyun`) | `src/aliyun.rs` | Aliyun dysmsapi `SendSms` 2017-05-25 (RPC v1 HMAC-SHA1 or ACS3-HMAC-SHA256) |
//! | [`KIND_TENCENT`] (`sms.tencent`) | `src/tencent.rs` | Tencent Cloud `SendSms` 2021-01-11 (TC3-HMAC-SHA256) |
//! | [`KIND_TWILIO`] (`sms.twilio`) | `src/twilio.rs` | Twilio Messages API 2010-04-01, plus signed StatusCallback receipts |
//!
//! Every kind needs the recipient's phone number (`AddressKind::Phone`, E.164) and none is
//! a presence channel. The `herald` binary links this crate with
//! `extern crate herald_channel_sms as _;` (behind its `sms` feature); an unreferenced
//! crate does not register. Configuration keys, template mapping and error tables are in
//! the crate's `README.md`.
//!
//! Invariants, for every provider:
//!
//! * **One attempt per `send`**: no retry, no sleep, no store. Vendor codes become a
//!   classified [`ChannelError`](herald_channel::ChannelError) in one `classify()` per
//!   provider.
//! * **No secret and no full phone number** in any error, log line or `Debug` output:
//!   secrets are `Secret`s, vendor messages pass through `vendor_text`, numbers are
//!   shown as [`mask_phone`] does (`+86138****0000`).
//! * **Bounded time**: every instance's HTTP client has its `timeout` (default 10 s), well
//!   under the dispatcher's 30 s per send, connects within at most 5 s of it, and follows
//!   no redirects.
//! * **Account problems take the instance down**: a reply meaning that no send can succeed
//!   until an operator acts (no balance, suspended account, rejected credentials) makes
//!   [`Channel::health`](herald_channel::Channel::health) `Down` until a later send
//!   succeeds.

use herald_channel::{AddressKind, ChannelDescriptor};

mod aliyun;
mod common;
mod tencent;
#[cfg(feature = "testing")]
pub mod testing;
mod twilio;

pub use common::mask_phone;

/// Aliyun (Alibaba Cloud) SMS, `dysmsapi` `SendSms`.
pub const KIND_ALIYUN: &str = "sms.aliyun";
/// Tencent Cloud SMS, `SendSms` 2021-01-11.
pub const KIND_TENCENT: &str = "sms.tencent";
/// Twilio Programmable Messaging.
pub const KIND_TWILIO: &str = "sms.twilio";

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: KIND_ALIYUN,
        summary: "SMS through Aliyun (dysmsapi SendSms) with pre-approved templates",
        address: AddressKind::Phone,
        presence: false,
        build: aliyun::build,
    }
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: KIND_TENCENT,
        summary: "SMS through Tencent Cloud (SendSms 2021-01-11) with pre-approved templates",
        address: AddressKind::Phone,
        presence: false,
        build: tencent::build,
    }
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: KIND_TWILIO,
        summary: "SMS through Twilio (free text; delivery receipts by StatusCallback)",
        address: AddressKind::Phone,
        presence: false,
        build: twilio::build,
    }
}

//! # herald-channel-email — Herald's e-mail channels
//!
//! One provider per file, what providers share in `common.rs`, registrations here (the
//! layout of every channel crate, `channels/sdk/README.md`). Today: [`KIND_SMTP`] (`email.smtp`), e-mail through an SMTP
//! server with lettre's pooled async transport (rustls with the *ring* provider; no
//! OpenSSL). The descriptor registers itself with `inventory`; the `herald` binary links
//! this crate with `extern crate herald_channel_email as _;`.
//!
//! Configuration (`[channels.<name>]`, `kind = "email.smtp"`), TLS modes and the error
//! mapping are described in the crate's `README.md`.
//!
//! With the `testing` feature, [`testing`] offers a loopback SMTP server that records mail
//! and answers scripted replies, for tests of this crate and of the code that drives it.

use herald_channel::{AddressKind, ChannelDescriptor};

mod common;
mod smtp;

#[cfg(feature = "testing")]
pub mod testing;

/// The kind of the SMTP channel.
pub const KIND_SMTP: &str = "email.smtp";

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: KIND_SMTP,
        summary: "e-mail through an SMTP server (STARTTLS, implicit TLS or plain)",
        address: AddressKind::Email,
        presence: false,
        build: smtp::build,
    }
}

//! # herald-channel-wechat — Herald's WeChat channels
//!
//! One provider per file:
//!
//! * [`KIND_TEMPLATE`] (`wechat.template`, [`template`]): template messages of a WeChat
//!   official account to the recipient's `wechatOpenId`. The access token comes from
//!   `stable_token`, lives in the core's shared cache under `herald:token:wechat:<appid>`
//!   until `expires_in - 300` s (one token per account for the whole cluster) and is
//!   refreshed by one caller in the cluster at a time ([`token`]); the clock is the SDK's
//!   injectable [`herald_channel::clock::Clock`].
//! * [`KIND_ROBOT`] (`wechat.robot`, [`robot`]): a WeCom group robot's webhook; each delivery
//!   is one post to the robot's group.
//!
//! What both share is in `common.rs`; with the `testing` feature, `testing` (not
//! compiled otherwise) has local stand-ins for WeChat's API and a WeCom robot.
//!
//! HTTP is reqwest with rustls on the *ring* provider (no OpenSSL, no aws-lc-rs), through
//! the SDK's `herald_channel::http`. Both
//! descriptors register themselves with `inventory`; the `herald` binary links this crate with
//! `extern crate herald_channel_wechat as _;`. Configuration, the error tables and limits are
//! described in the crate's `README.md`.
//!
//! Invariants: a channel makes one attempt per `send` (the one exception: a token WeChat
//! refuses is refreshed once and the call repeated once); it never sleeps, retries later or
//! follows redirects; the app secret, access tokens and webhook keys never appear in `Debug`
//! output, errors or logs.

use herald_channel::{AddressKind, ChannelDescriptor};

mod common;
pub mod robot;
pub mod template;
#[cfg(feature = "testing")]
pub mod testing;
pub mod token;

/// Official-account template messages.
pub const KIND_TEMPLATE: &str = "wechat.template";
/// WeCom group robot.
pub const KIND_ROBOT: &str = "wechat.robot";

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: KIND_TEMPLATE,
        summary: "WeChat official-account template messages to the recipient's openid",
        address: AddressKind::WechatOpenId,
        presence: false,
        build: template::build,
    }
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: KIND_ROBOT,
        summary: "WeCom group robot (webhook): one markdown or text post per delivery",
        // The robot posts to its group: the receiver needs no address.
        address: AddressKind::None,
        presence: false,
        build: robot::build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_are_registered() {
        let t = herald_channel::find(KIND_TEMPLATE).expect("wechat.template is registered");
        assert_eq!(t.address, AddressKind::WechatOpenId);
        assert!(!t.presence);
        assert_eq!(t.family(), "wechat");
        let r = herald_channel::find(KIND_ROBOT).expect("wechat.robot is registered");
        assert_eq!(r.address, AddressKind::None);
        assert!(!r.presence);
        assert_eq!(r.family(), "wechat");
    }
}

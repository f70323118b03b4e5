//! What the e-mail providers share: reading an instance's configuration table with the
//! key named in every error, and the SDK's configuration helpers. `email.smtp` is the only
//! provider today; a second one (an HTTP API such as SES or Postmark) puts what it has in
//! common with `smtp.rs` here.

pub(crate) use herald_channel::{config_error, Secret};

/// Configuration parsing is the SDK's (it names the key path in type errors).
pub(crate) use herald_channel::parse_config as parse;

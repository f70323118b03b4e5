//! What the e-mail providers share: reading an instance's configuration table with the
//! key named in every error, and the SDK's configuration helpers. `email.smtp` is the only
//! provider today; a second one (an HTTP API such as SES or Postmark) puts what it has in
//! common with `smtp.rs` here.

use herald_channel::{parse_config, BuildContext, ConfigError};
use serde::de::DeserializeOwned;

pub(crate) use herald_channel::{config_error, Secret};

/// [`parse_config`], plus the key in type errors (serde names the key only for unknown and
/// missing fields; `port = "x"` would otherwise just say "expected u16").
pub(crate) fn parse<T: DeserializeOwned>(ctx: &BuildContext<'_>) -> Result<T, ConfigError> {
    parse_config::<T>(ctx).map_err(|err| {
        match serde_path_to_error::deserialize::<_, T>(ctx.config) {
            Err(e) if e.path().to_string() != "." => {
                ConfigError::new(ctx.name, format!("{}: {}", e.path(), e.inner()))
            }
            _ => err,
        }
    })
}

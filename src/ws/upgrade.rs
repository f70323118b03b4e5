//! The WebSocket handshake (RFC 6455 §4.2.1), done here rather than with axum's
//! `WebSocketUpgrade`: the session needs the upgraded socket itself, not only axum's
//! `WebSocket` over it, to close the way RFC 6455 §7.1.1 asks (`close` in `mod.rs` reads
//! what the client still sends before it drops the socket; dropping a socket with unread
//! input makes the kernel send a reset, which can destroy the close frame before the
//! client reads it). The handshake is a few header checks and tungstenite's
//! `derive_accept_key`; tokio-tungstenite then runs the protocol over hyper's `Upgraded`.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::error::ApiError;

/// A checked upgrade request: what the `101` and the hand-over need.
pub struct Handshake {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// A header that lists `token` (comma-separated, any case).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl Handshake {
    /// Check the request (`GET` is the route's); a `4xx` names what is wrong.
    pub fn check(req: &mut Request) -> Result<Handshake, ApiError> {
        let bad = |what: &str| ApiError::bad_request(format!("WebSocket upgrade required: {what}"));
        let h = req.headers();
        if !lists(h, header::CONNECTION, "upgrade") {
            return Err(bad("`Connection` must include `upgrade`"));
        }
        if !lists(h, header::UPGRADE, "websocket") {
            return Err(bad("`Upgrade` must be `websocket`"));
        }
        if h.get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(bad("`Sec-WebSocket-Version` must be 13"));
        }
        let key = h
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| bad("`Sec-WebSocket-Key` is missing"))?;
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| bad("`Sec-WebSocket-Key` is not valid"))?;
        let on_upgrade = req.extensions_mut().remove::<OnUpgrade>().ok_or_else(|| {
            ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket upgrade required: this connection cannot be upgraded",
            )
        })?;
        Ok(Handshake { accept, on_upgrade })
    }

    /// The `101 Switching Protocols` answer; `session` runs on the connection once hyper
    /// hands it over.
    pub fn accept<F, Fut>(self, session: F) -> Response
    where
        F: FnOnce(Upgraded) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Handshake { accept, on_upgrade } = self;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => session(upgraded).await,
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, accept),
            ],
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        let mut b = axum::http::Request::builder().uri("/websocket/t");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn each_missing_piece_is_named() {
        for (skip, named) in [
            (0, "Connection"),
            (1, "Upgrade"),
            (2, "Sec-WebSocket-Version"),
            (3, "Sec-WebSocket-Key"),
        ] {
            let headers: Vec<_> = GOOD
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, h)| *h)
                .collect();
            let err = Handshake::check(&mut req(&headers)).err().expect("refused");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            let body = format!("{err:?}");
            assert!(body.contains(named), "{skip}: {body}");
        }
    }

    #[test]
    fn a_request_that_cannot_be_upgraded_is_426() {
        // Headers fine, but no connection behind it to take over (hyper adds `OnUpgrade`).
        let err = Handshake::check(&mut req(&GOOD)).err().expect("refused");
        assert_eq!(err.status(), StatusCode::UPGRADE_REQUIRED);
    }

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}

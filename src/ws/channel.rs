//! The WebSocket channel: registered through the same descriptor as every other channel.
//! It is a *presence* channel: a delivery to a user with no session is `Held` (stays
//! pending) and replayed when the user connects; otherwise it is `Queued` on the user's
//! sessions, and the session records `sent` once the frame is written to its socket.

use std::sync::Arc;

use herald_channel::{
    async_trait, Accepted, AddressKind, Audience, BuildContext, Channel, ChannelDescriptor,
    ChannelError, ConfigError, Outgoing,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::session::{Outbound, SessionRegistry};

pub use crate::model::WEBSOCKET;

pub struct WebSocketChannel {
    registry: Arc<dyn SessionRegistry>,
}

#[async_trait]
impl Channel for WebSocketChannel {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        self.send_batch(std::slice::from_ref(out))
            .await
            .pop()
            .unwrap_or(Ok(Accepted::Held))
    }

    async fn send_audience(&self, audience: &Audience<'_>) -> Vec<Result<Accepted, ChannelError>> {
        self.fan_out(audience)
    }

    async fn send_batch(&self, outs: &[Outgoing]) -> Vec<Result<Accepted, ChannelError>> {
        // Serialize each message's frame once, however many receivers it has.
        let mut frame: Option<(Arc<herald_channel::MessageView>, Utf8Bytes)> = None;
        outs.iter()
            .map(|out| {
                let bytes = match &frame {
                    Some((m, b)) if Arc::ptr_eq(m, &out.message) => b.clone(),
                    _ => {
                        let b = Utf8Bytes::from(super::frame::message_frame(&out.message));
                        frame = Some((out.message.clone(), b.clone()));
                        b
                    }
                };
                let item = Outbound {
                    delivery_id: out.delivery_id,
                    message: out.message.clone(),
                    frame: bytes,
                };
                if self.registry.push(&out.receiver, &item).accepted > 0 {
                    Ok(Accepted::Queued)
                } else {
                    Ok(Accepted::Held)
                }
            })
            .collect()
    }
}

impl WebSocketChannel {
    /// The frame once, then one pass over this node's sessions (`push_audience`).
    fn fan_out(&self, a: &Audience<'_>) -> Vec<Result<Accepted, ChannelError>> {
        let frame = Utf8Bytes::from(super::frame::message_frame(&a.message));
        self.registry
            .push_audience(a.receivers, a.delivery_id, &a.message, &frame)
            .into_iter()
            .map(|queued| {
                Ok(if queued {
                    Accepted::Queued
                } else {
                    Accepted::Held
                })
            })
            .collect()
    }
}

fn build(ctx: BuildContext<'_>) -> Result<Arc<dyn Channel>, ConfigError> {
    let registry = ctx
        .services
        .get::<Arc<dyn SessionRegistry>>()
        .ok_or_else(|| {
            ConfigError::new(ctx.name, "the websocket channel needs the session registry")
        })?;
    Ok(Arc::new(WebSocketChannel { registry }))
}

herald_channel::inventory::submit! {
    ChannelDescriptor {
        kind: WEBSOCKET,
        summary: "Browser push over WebSocket (/websocket/{token}), replayed on reconnect",
        address: AddressKind::None,
        presence: true,
        build,
    }
}

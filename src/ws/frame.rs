//! WebSocket wire frames (docs/websocket.md §2). Server frames are serialized once per message and
//! shared by every session that receives it.

use serde::{Deserialize, Serialize};

use herald_channel::MessageView;

/// Server → client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    #[serde(rename_all = "camelCase")]
    Welcome {
        session_id: &'a str,
        user_id: &'a str,
        server_time: String,
        /// How many undelivered messages the replay right after this frame sends, so a
        /// client knows when it has caught up (a message deleted meanwhile is skipped).
        pending: u64,
        /// The user's inbox counts (docs/api.md §6.2); absent when they could not be read.
        #[serde(skip_serializing_if = "Option::is_none")]
        counts: Option<CountsFrame>,
        /// SSE: the `Last-Event-ID` the client resumed from, echoed (the replay does not
        /// depend on it). Absent on WebSocket and on a first connection.
        #[serde(skip_serializing_if = "Option::is_none")]
        resumed_from: Option<&'a str>,
    },
    #[serde(rename_all = "camelCase")]
    Message {
        id: &'a str,
        title: &'a str,
        content: &'a str,
        msg_type: i64,
        sender: &'a str,
        created_at: &'a str,
    },
    /// Inbox entries changed state (docs/websocket.md §2.1): the ids (or `all`, up to
    /// `before`) and the flags the change set.
    #[serde(rename_all = "camelCase")]
    State {
        #[serde(skip_serializing_if = "Option::is_none")]
        ids: Option<&'a [String]>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        all: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seen: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        read: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        archived: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        deleted: Option<bool>,
    },
    /// The user's inbox counts, after a state change.
    Counts(CountsFrame),
    Pong,
    Error {
        error: &'a str,
    },
}

/// `{"unseen","unread","total"}`: the welcome's `counts` and the `counts` frame's fields.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CountsFrame {
    pub unseen: u64,
    pub unread: u64,
    pub total: u64,
}

impl From<crate::model::inbox::Counts> for CountsFrame {
    fn from(c: crate::model::inbox::Counts) -> Self {
        CountsFrame {
            unseen: c.unseen,
            unread: c.unread,
            total: c.total,
        }
    }
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","error":"internal"}"#.into())
    }
}

/// The message frame for `m`.
pub fn message_frame(m: &MessageView) -> String {
    ServerFrame::Message {
        id: &m.id,
        title: &m.title,
        content: &m.content,
        msg_type: m.msg_type,
        sender: &m.sender,
        created_at: &m.created_at,
    }
    .to_json()
}

/// Client → server.
///
/// `deny_unknown_fields` covers only the struct variants: serde ignores it for a unit
/// variant of an internally tagged enum (`{"type":"ping","x":1}` would pass), so [`decode`]
/// checks every frame's fields itself against [`fields_of`].
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientFrame {
    Ack { id: String },
    Read { id: String },
    Ping,
}

/// The fields a client frame of type `ty` may have (`type` included); `None` for an
/// unknown type.
fn fields_of(ty: &str) -> Option<&'static [&'static str]> {
    match ty {
        "ack" | "read" => Some(&["type", "id"]),
        "ping" => Some(&["type"]),
        _ => None,
    }
}

/// A client-chosen name quoted in an error frame, cut to 64 characters.
fn quoted(name: &str) -> String {
    match name.char_indices().nth(64) {
        Some((end, _)) => format!("`{}…`", &name[..end]),
        None => format!("`{name}`"),
    }
}

/// Decode a client text frame; the error text is sent back in an error frame.
pub fn decode(text: &str) -> Result<ClientFrame, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(obj) = value.as_object() else {
        return Err("expected a JSON object with a \"type\" field".into());
    };
    let ty = match obj.get("type").and_then(|t| t.as_str()) {
        None => return Err("missing field `type` (one of ack, read, ping)".into()),
        Some(ty) => ty,
    };
    let Some(fields) = fields_of(ty) else {
        return Err(format!(
            "unknown frame type {} (expected ack, read or ping)",
            quoted(ty)
        ));
    };
    // Every type alike, before serde (which would let a `ping` through, see above).
    if let Some(extra) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        let expected = match fields {
            [_] => format!("`{ty}` frames have only `type`"),
            _ => format!("`{ty}` frames have `type` and `id`"),
        };
        return Err(format!("unknown field {} ({expected})", quoted(extra)));
    }
    let frame: ClientFrame = serde_json::from_value(value).map_err(|e| e.to_string())?;
    match &frame {
        ClientFrame::Ack { id } | ClientFrame::Read { id } if id.is_empty() || id.len() > 64 => {
            Err("field `id` must be a message id".into())
        }
        _ => Ok(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_client_frames() {
        assert_eq!(decode(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
        assert_eq!(
            decode(r#"{"type":"ack","id":"x"}"#),
            Ok(ClientFrame::Ack { id: "x".into() })
        );
        assert_eq!(
            decode(r#"{"type":"read","id":"x"}"#),
            Ok(ClientFrame::Read { id: "x".into() })
        );
    }

    #[test]
    fn rejects_bad_frames_with_reasons() {
        assert!(decode("nope").unwrap_err().contains("invalid JSON"));
        assert!(decode("[1]").unwrap_err().contains("object"));
        assert!(decode(r#"{"id":"x"}"#).unwrap_err().contains("type"));
        assert!(decode(r#"{"type":"shout"}"#).unwrap_err().contains("shout"));
        assert!(decode(r#"{"type":"ack"}"#).unwrap_err().contains("id"));
        assert!(decode(r#"{"type":"ack","id":""}"#)
            .unwrap_err()
            .contains("id"));
        assert!(decode(r#"{"type":"ack","id":5}"#).is_err());
    }

    #[test]
    fn every_frame_type_rejects_unknown_fields() {
        for (frame, field) in [
            (r#"{"type":"ping","x":1}"#, "`x`"),
            (r#"{"type":"ping","id":"m1"}"#, "`id`"),
            (r#"{"type":"ack","id":"m1","x":1}"#, "`x`"),
            (r#"{"type":"read","id":"m1","extra":null}"#, "`extra`"),
            (r#"{"x":1,"type":"ack","id":"m1"}"#, "`x`"),
        ] {
            let err = decode(frame).unwrap_err();
            assert!(
                err.starts_with("unknown field ") && err.contains(field),
                "{frame}: {err}"
            );
        }
        // A long name is quoted cut, so an error frame stays small.
        let long = format!(r#"{{"type":"ping","{}":1}}"#, "k".repeat(10_000));
        let err = decode(&long).unwrap_err();
        assert!(err.len() < 200, "{err}");
        assert!(err.contains(&format!("`{}…`", "k".repeat(64))), "{err}");
        // The known fields still decode.
        assert_eq!(decode(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
        assert_eq!(
            decode(r#"{"id":"m1","type":"read"}"#),
            Ok(ClientFrame::Read { id: "m1".into() })
        );
    }

    #[test]
    fn message_frame_has_the_contract_fields() {
        let m = MessageView {
            id: "1".into(),
            title: "Report ready".into(),
            content: r#"{"reportId":7}"#.into(),
            msg_type: 2,
            sender: "lab".into(),
            created_at: "2026-11-28T00:00:00.000Z".into(),
            template: None,
            data: None,
        };
        let v: serde_json::Value = serde_json::from_str(&message_frame(&m)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"message","id":"1","title":"Report ready","content":"{\"reportId\":7}",
                "msgType":2,"sender":"lab","createdAt":"2026-11-28T00:00:00.000Z"})
        );
        let w: serde_json::Value = serde_json::from_str(
            &ServerFrame::Welcome {
                session_id: "s",
                user_id: "u",
                server_time: "t".into(),
                pending: 2,
                counts: Some(CountsFrame {
                    unseen: 1,
                    unread: 2,
                    total: 3,
                }),
                resumed_from: None,
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            w,
            serde_json::json!({"type":"welcome","sessionId":"s","userId":"u","serverTime":"t","pending":2,
                "counts":{"unseen":1,"unread":2,"total":3}})
        );
        let c: serde_json::Value = serde_json::from_str(
            &ServerFrame::Counts(CountsFrame {
                unseen: 0,
                unread: 1,
                total: 4,
            })
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            c,
            serde_json::json!({"type":"counts","unseen":0,"unread":1,"total":4})
        );
        let resumed: serde_json::Value = serde_json::from_str(
            &ServerFrame::Welcome {
                session_id: "s",
                user_id: "u",
                server_time: "t".into(),
                pending: 0,
                counts: None,
                resumed_from: Some("41"),
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(resumed["resumedFrom"], "41");
    }
}

//! Inbox state changes and their live sync (docs/api.md §6, docs/websocket.md §2.1).
//!
//! A change is one store operation ([`crate::store::Store::inbox_mark`]); once it has
//! committed, every session of the user — on this node and, through the registry, on the
//! others — gets a `state` frame and then a `counts` frame. Both are *control* frames:
//! queued like messages (the session's bounded queue), never recorded as `sent`.

use std::sync::Arc;

use herald_channel::MessageView;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frame::{CountsFrame, ServerFrame};
use crate::model::inbox::{Counts, Marked, Op, Target};
use crate::model::WEBSOCKET;
use crate::session::{Outbound, CONTROL_FRAME};
use crate::state::AppState;
use crate::store::StoreError;

/// What a change did, for the API's answer.
#[derive(Debug)]
pub enum Outcome {
    /// `changed` entries changed; the counts read after the change.
    Done { changed: u64, counts: Counts },
    /// These ids are not in the user's inbox: nothing changed.
    Unknown(Vec<String>),
}

/// Apply `op` to `user`'s entries, then tell all of the user's sessions.
pub async fn mark(
    app: &AppState,
    user: &str,
    op: Op,
    target: Target,
) -> Result<Outcome, StoreError> {
    let ids = match &target {
        Target::Ids(ids) => Some(ids.clone()),
        Target::All { .. } => None,
    };
    let before = match &target {
        Target::All { before } => *before,
        Target::Ids(_) => None,
    };
    let (changed, moved) = match app.store.inbox_mark(user, op, target).await? {
        Marked::Unknown(ids) => return Ok(Outcome::Unknown(ids)),
        Marked::Done { changed, moved } => (changed, moved),
    };
    if let Some(status) = op.status() {
        app.dispatcher.moved(WEBSOCKET, status, moved);
    }
    app.metrics
        .inbox_changes
        .fetch_add(changed, std::sync::atomic::Ordering::Relaxed);
    let counts = app.store.inbox_counts(user).await?;
    if changed > 0 && op != Op::Ack {
        push(app, user, &state_frame(op, ids.as_deref(), before));
        push(app, user, &ServerFrame::Counts(counts.into()).to_json());
    }
    Ok(Outcome::Done { changed, counts })
}

/// The `state` frame for `op` over `ids` (or all entries up to `before`).
fn state_frame(op: Op, ids: Option<&[String]>, before: Option<i64>) -> String {
    let (mut seen, mut read, mut archived, mut deleted) = (None, None, None, None);
    match op {
        Op::Seen => seen = Some(true),
        Op::Read => (seen, read) = (Some(true), Some(true)),
        Op::Unread => read = Some(false),
        Op::Archive => archived = Some(true),
        Op::Unarchive => archived = Some(false),
        Op::Delete => deleted = Some(true),
        Op::Ack => {}
    }
    ServerFrame::State {
        ids,
        all: ids.is_none(),
        before: before.map(|b| b.to_string()),
        seen,
        read,
        archived,
        deleted,
    }
    .to_json()
}

/// Queue a control frame for every session of `user` (every node).
fn push(app: &AppState, user: &str, frame: &str) {
    let item = Outbound {
        delivery_id: CONTROL_FRAME,
        message: Arc::new(MessageView {
            id: String::new(),
            title: String::new(),
            content: String::new(),
            msg_type: 0,
            sender: String::new(),
            created_at: String::new(),
            template: None,
            data: None,
        }),
        frame: Utf8Bytes::from(frame.to_owned()),
    };
    app.registry.push(user, &item);
}

/// The welcome's counts: `None` (and logged) when they cannot be read — the session still
/// opens, and the next change sends them.
pub async fn welcome_counts(app: &AppState, user: &str) -> Option<CountsFrame> {
    match app.store.inbox_counts(user).await {
        Ok(c) => Some(c.into()),
        Err(e) => {
            tracing::warn!(error = %e, "inbox counts for the welcome not read");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_frames_name_only_what_changed() {
        let ids = vec!["a".to_owned()];
        assert_eq!(
            state_frame(Op::Read, Some(&ids), None),
            r#"{"type":"state","ids":["a"],"seen":true,"read":true}"#
        );
        assert_eq!(
            state_frame(Op::Unread, Some(&ids), None),
            r#"{"type":"state","ids":["a"],"read":false}"#
        );
        assert_eq!(
            state_frame(Op::Archive, None, Some(42)),
            r#"{"type":"state","all":true,"before":"42","archived":true}"#
        );
        assert_eq!(
            state_frame(Op::Delete, None, None),
            r#"{"type":"state","all":true,"deleted":true}"#
        );
    }
}

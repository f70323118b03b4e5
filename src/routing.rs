//! Routing policies: which channels a message goes to, and in which order.
//!
//! * `all` — every listed channel at once (the default).
//! * `failover` — an ordered chain of steps `{channel, wait}`, one chain per receiver. The
//!   next step starts when the current one fails permanently, has no address, is opted out,
//!   is over its daily quota, or is not delivered within `wait`; the chain stops at the first
//!   success. A step without `wait` succeeds when its delivery is `sent`; a step with `wait`
//!   needs `delivered`/`read` within it. An ack or read on *any* of the receiver's
//!   deliveries of the message ends the chain. Presence-aware: a receiver who is online when
//!   a step is chosen gets the `websocket` step first; one who is offline is not waited for
//!   on it (the WebSocket delivery stays, for replay).
//!
//! [`decide`] is the whole policy as a pure function; the scheduler (`dispatch/schedule.rs`)
//! loads a chain's state, calls it and stores the result atomically.

use std::collections::HashSet;
use std::time::Duration;

use crate::model::{rfc3339, Status};

/// Most steps in one failover chain.
pub const MAX_STEPS: usize = 10;
/// Longest `wait` of a step.
pub const MAX_WAIT: Duration = Duration::from_secs(30 * 86_400);

pub use crate::config::{PolicyKind, PolicySpec, RoutingSettings, StepSpec};
pub use crate::model::{LogEntry, Policy, Progress, RouteState, Step};

impl RoutingSettings {
    /// The default policy for a send with this template and type.
    pub fn default_for(&self, template: Option<&str>, msg_type: i64) -> Option<&PolicySpec> {
        template
            .and_then(|t| self.templates.get(t))
            .or_else(|| self.types.get(&msg_type.to_string()))
    }

    /// Check every policy against the configured channel instances (start-up).
    pub fn validate(&self, known: &dyn Fn(&str) -> Result<(), String>) -> Result<(), String> {
        for (t, p) in &self.types {
            t.parse::<i64>().map_err(|_| {
                format!("routing.types.{t}: the key must be a message type (an integer)")
            })?;
            p.validate(known)
                .map_err(|(f, e)| format!("routing.types.{t}.{f}: {e}"))?;
        }
        for (t, p) in &self.templates {
            p.validate(known)
                .map_err(|(f, e)| format!("routing.templates.{t}.{f}: {e}"))?;
        }
        Ok(())
    }
}

impl PolicySpec {
    /// Validate; the error names the field (relative: `steps[1].wait`) and the problem.
    pub fn validate(
        &self,
        known: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<Policy, (String, String)> {
        if self.steps.is_empty() {
            return Err(("steps".into(), "must list at least one channel".into()));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(("steps".into(), format!("at most {MAX_STEPS} steps")));
        }
        let mut seen = HashSet::new();
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, s) in self.steps.iter().enumerate() {
            known(&s.channel).map_err(|e| (format!("steps[{i}].channel"), e))?;
            if !seen.insert(s.channel.as_str()) {
                return Err((
                    format!("steps[{i}].channel"),
                    format!("channel `{}` is listed twice", s.channel),
                ));
            }
            let wait_ms = match (&s.wait, self.policy) {
                (None, _) => None,
                (Some(_), PolicyKind::All) => {
                    return Err((
                        format!("steps[{i}].wait"),
                        "`wait` applies only to the `failover` policy".into(),
                    ))
                }
                (Some(w), PolicyKind::Failover) => {
                    Some(parse_wait(w).map_err(|e| (format!("steps[{i}].wait"), e))?)
                }
            };
            steps.push(Step {
                channel: s.channel.clone(),
                wait_ms,
            });
        }
        Ok(Policy {
            policy: self.policy,
            steps,
        })
    }
}

fn parse_wait(w: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(w.trim())
        .map_err(|e| format!("`{w}` is not a duration like \"90s\", \"2m\" or \"1h\": {e}"))?;
    if d > MAX_WAIT {
        return Err(format!("`{w}` is longer than 30 days"));
    }
    Ok(d.as_millis() as i64)
}

fn human(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64)).to_string()
}

impl LogEntry {
    fn new(now_ms: i64, step: Option<(usize, &Step)>, event: &str, reason: String) -> LogEntry {
        LogEntry {
            at: rfc3339(now_ms),
            step: step.map(|(i, _)| i),
            channel: step.map(|(_, s)| s.channel.clone()),
            event: event.into(),
            reason,
        }
    }
}

/// One of the receiver's deliveries of the message.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: i64,
    pub channel: String,
    pub status: Status,
    pub error: Option<String>,
}

/// Can a step's channel take the delivery now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Yes. `presence`: a WebSocket-like channel (held for replay when offline).
    Ready {
        address: Option<String>,
        presence: bool,
    },
    /// No: the delivery is born `failed` with this error (`no_address`, `opted_out`,
    /// `over_quota`) and the chain goes on.
    Skip(String),
}

/// A delivery a decision creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub channel: String,
    pub address: Option<String>,
    /// `Some(error)`: born `failed`.
    pub failed: Option<String>,
    pub presence: bool,
}

/// What to store for a chain after one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub state: RouteState,
    pub progress: Progress,
    /// When to look again (`None`: only when one of its deliveries changes status).
    pub due_at_ms: Option<i64>,
    pub log: Vec<LogEntry>,
    pub start: Vec<Start>,
    /// Pending provider deliveries of a timed-out step to fail: (delivery id, error).
    pub supersede: Vec<(i64, String)>,
}

/// Evaluate a failover chain at `now_ms`.
pub fn decide(
    steps: &[Step],
    progress: Progress,
    seen: &[Seen],
    now_ms: i64,
    online: bool,
    probe: &mut dyn FnMut(&Step) -> Probe,
) -> Decision {
    let mut d = Decision {
        state: RouteState::Running,
        progress,
        due_at_ms: None,
        log: Vec::new(),
        start: Vec::new(),
        supersede: Vec::new(),
    };
    let current = progress.step.and_then(|i| steps.get(i).map(|s| (i, s)));
    // Delivered or read anywhere: done.
    if let Some(ok) = seen
        .iter()
        .find(|s| matches!(s.status, Status::Delivered | Status::Read))
    {
        let step = steps
            .iter()
            .enumerate()
            .find(|(_, s)| s.channel == ok.channel);
        let (event, reason) = if current.is_some_and(|(_, s)| s.channel == ok.channel) {
            ("succeeded", format!("{} on {}", ok.status, ok.channel))
        } else {
            (
                "acknowledged",
                format!("{} on {}: remaining steps cancelled", ok.status, ok.channel),
            )
        };
        d.log.push(LogEntry::new(now_ms, step, event, reason));
        d.state = RouteState::Succeeded;
        return d;
    }
    if let Some((i, step)) = current {
        let mine = seen.iter().find(|s| s.channel == step.channel);
        match mine {
            None => d.log.push(LogEntry::new(
                now_ms,
                Some((i, step)),
                "failed",
                "its delivery is gone".into(),
            )),
            Some(s) if s.status == Status::Failed => d.log.push(LogEntry::new(
                now_ms,
                Some((i, step)),
                "failed",
                s.error.clone().unwrap_or_else(|| "failed".into()),
            )),
            Some(s) if s.status == Status::Sent && step.wait_ms.is_none() => {
                d.log.push(LogEntry::new(
                    now_ms,
                    Some((i, step)),
                    "succeeded",
                    format!("sent on {}", step.channel),
                ));
                d.state = RouteState::Succeeded;
                return d;
            }
            Some(s) => {
                let Some(wait) = step.wait_ms else {
                    return d; // wait for the outcome (a status change makes it due)
                };
                let deadline = progress.started_at_ms.unwrap_or(now_ms) + wait;
                if now_ms < deadline {
                    d.due_at_ms = Some(deadline);
                    return d;
                }
                d.log.push(LogEntry::new(
                    now_ms,
                    Some((i, step)),
                    "timeout",
                    format!("not delivered within {}", human(wait)),
                ));
                if s.status == Status::Pending {
                    if let Probe::Ready {
                        presence: false, ..
                    } = probe(step)
                    {
                        d.supersede.push((
                            s.id,
                            format!("superseded: not delivered within {}", human(wait)),
                        ));
                    }
                }
            }
        }
    }
    advance(steps, &mut d, seen, now_ms, online, probe);
    d
}

/// Start the next step that can take the delivery; record the ones that cannot.
fn advance(
    steps: &[Step],
    d: &mut Decision,
    seen: &[Seen],
    now_ms: i64,
    online: bool,
    probe: &mut dyn FnMut(&Step) -> Probe,
) {
    let waited_on = d.progress.step;
    let mut tried: HashSet<&str> = seen.iter().map(|s| s.channel.as_str()).collect();
    loop {
        let untried = |tried: &HashSet<&str>| {
            steps
                .iter()
                .enumerate()
                .filter(|(_, s)| !tried.contains(s.channel.as_str()))
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        let left = untried(&tried);
        let Some(&first) = left.first() else {
            // Nothing else worked, but the receiver was skipped on a live channel while
            // offline: wait on that one after all (they may connect), once.
            let fallback =
                steps.iter().enumerate().find(|(i, s)| {
                    Some(*i) != waited_on
                        && (d.start.iter().any(|st| {
                            st.channel == s.channel && st.presence && st.failed.is_none()
                        }) || seen.iter().any(|se| {
                            se.channel == s.channel
                                && se.status.is_undelivered()
                                && matches!(probe(s), Probe::Ready { presence: true, .. })
                        }))
                });
            if let Some((i, step)) = fallback {
                d.log.push(LogEntry::new(
                    now_ms,
                    Some((i, step)),
                    "started",
                    "no other step left: waiting for the receiver to connect".into(),
                ));
                d.progress = Progress {
                    step: Some(i),
                    started_at_ms: Some(now_ms),
                };
                d.due_at_ms = step.wait_ms.map(|w| now_ms + w);
                return;
            }
            d.state = RouteState::Exhausted;
            d.due_at_ms = None;
            d.log.push(LogEntry::new(
                now_ms,
                None,
                "exhausted",
                "no step left".into(),
            ));
            return;
        };
        // Presence-aware: an online receiver gets the live channel first.
        let mut pick = first;
        let mut jumped = false;
        if online {
            if let Some(&ws) = left
                .iter()
                .find(|&&i| matches!(probe(&steps[i]), Probe::Ready { presence: true, .. }))
            {
                jumped = ws != first;
                pick = ws;
            }
        }
        let step = &steps[pick];
        tried.insert(step.channel.as_str());
        match probe(step) {
            Probe::Skip(error) => {
                d.log.push(LogEntry::new(
                    now_ms,
                    Some((pick, step)),
                    "skipped",
                    error.clone(),
                ));
                d.start.push(Start {
                    channel: step.channel.clone(),
                    address: None,
                    failed: Some(error),
                    presence: false,
                });
            }
            Probe::Ready { address, presence } => {
                d.start.push(Start {
                    channel: step.channel.clone(),
                    address,
                    failed: None,
                    presence,
                });
                let more = !untried(&tried).is_empty();
                if presence && !online && more {
                    d.log.push(LogEntry::new(
                        now_ms,
                        Some((pick, step)),
                        "skipped",
                        "receiver offline: not waiting (kept for replay)".into(),
                    ));
                    continue;
                }
                let reason = if jumped {
                    "receiver online: live channel first".to_owned()
                } else {
                    match step.wait_ms {
                        Some(w) => format!("waiting up to {} for delivery", human(w)),
                        None => "waiting for the hand-over".to_owned(),
                    }
                };
                d.log
                    .push(LogEntry::new(now_ms, Some((pick, step)), "started", reason));
                d.progress = Progress {
                    step: Some(pick),
                    started_at_ms: Some(now_ms),
                };
                d.due_at_ms = step.wait_ms.map(|w| now_ms + w);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Vec<Step> {
        vec![
            Step {
                channel: "websocket".into(),
                wait_ms: Some(120_000),
            },
            Step {
                channel: "wechat".into(),
                wait_ms: None,
            },
            Step {
                channel: "sms".into(),
                wait_ms: None,
            },
        ]
    }

    fn ready(s: &Step) -> Probe {
        Probe::Ready {
            address: Some(format!("addr-{}", s.channel)),
            presence: s.channel == "websocket",
        }
    }

    fn seen(id: i64, channel: &str, status: Status) -> Seen {
        Seen {
            id,
            channel: channel.into(),
            status,
            error: (status == Status::Failed).then(|| "permanent: nope".into()),
        }
    }

    const NOT_STARTED: Progress = Progress {
        step: None,
        started_at_ms: None,
    };

    fn at(step: usize, started: i64) -> Progress {
        Progress {
            step: Some(step),
            started_at_ms: Some(started),
        }
    }

    #[test]
    fn online_receiver_starts_on_websocket_and_waits() {
        let d = decide(&chain(), NOT_STARTED, &[], 1_000, true, &mut ready);
        assert_eq!(d.state, RouteState::Running);
        assert_eq!(d.progress, at(0, 1_000));
        assert_eq!(d.due_at_ms, Some(121_000));
        assert_eq!(d.start.len(), 1);
        assert_eq!(d.start[0].channel, "websocket");
        assert_eq!(d.log[0].event, "started");
    }

    #[test]
    fn offline_receiver_is_not_waited_for_on_websocket() {
        let d = decide(&chain(), NOT_STARTED, &[], 1_000, false, &mut ready);
        let channels: Vec<_> = d.start.iter().map(|s| s.channel.as_str()).collect();
        assert_eq!(channels, ["websocket", "wechat"]);
        assert_eq!(d.progress, at(1, 1_000));
        assert_eq!(
            d.due_at_ms, None,
            "wechat has no wait: waits for its outcome"
        );
        assert_eq!(d.log[0].event, "skipped");
        assert!(d.log[0].reason.contains("offline"));
    }

    #[test]
    fn online_receiver_jumps_to_a_later_websocket_step() {
        let mut steps = chain();
        steps.rotate_left(1); // wechat, sms, websocket
        let d = decide(&steps, NOT_STARTED, &[], 0, true, &mut ready);
        assert_eq!(d.start[0].channel, "websocket");
        assert_eq!(d.progress.step, Some(2));
        assert!(d.log[0].reason.contains("online"));
        // Not acked in time: back to the chain's order, wechat first.
        let d = decide(
            &steps,
            d.progress,
            &[seen(1, "websocket", Status::Sent)],
            120_000,
            true,
            &mut ready,
        );
        assert_eq!(d.log[0].event, "timeout");
        assert_eq!(d.start[0].channel, "wechat");
        assert!(
            d.supersede.is_empty(),
            "a websocket delivery stays for replay"
        );
    }

    #[test]
    fn waiting_step_comes_due_at_its_deadline_then_times_out() {
        let s = [seen(1, "websocket", Status::Sent)];
        let d = decide(&chain(), at(0, 1_000), &s, 60_000, true, &mut ready);
        assert_eq!(d.state, RouteState::Running);
        assert_eq!(d.due_at_ms, Some(121_000));
        assert!(d.start.is_empty() && d.log.is_empty());
        let d = decide(&chain(), at(0, 1_000), &s, 121_000, true, &mut ready);
        assert_eq!(d.log[0].event, "timeout");
        assert_eq!(d.start[0].channel, "wechat");
        assert_eq!(d.progress, at(1, 121_000));
    }

    #[test]
    fn ack_anywhere_ends_the_chain() {
        let s = [
            seen(1, "websocket", Status::Delivered),
            seen(2, "wechat", Status::Pending),
        ];
        let d = decide(&chain(), at(1, 0), &s, 5, true, &mut ready);
        assert_eq!(d.state, RouteState::Succeeded);
        assert_eq!(d.log[0].event, "acknowledged");
        assert!(d.start.is_empty());
    }

    #[test]
    fn sent_is_success_for_a_step_without_wait() {
        let s = [
            seen(1, "websocket", Status::Sent),
            seen(2, "wechat", Status::Sent),
        ];
        let d = decide(&chain(), at(1, 0), &s, 5, true, &mut ready);
        assert_eq!(d.state, RouteState::Succeeded);
        assert_eq!(d.log[0].event, "succeeded");
    }

    #[test]
    fn failure_moves_on_and_the_last_failure_exhausts() {
        let s = [
            seen(1, "websocket", Status::Sent),
            seen(2, "wechat", Status::Failed),
        ];
        let d = decide(&chain(), at(1, 0), &s, 5, false, &mut ready);
        assert_eq!(d.log[0].event, "failed");
        assert_eq!(d.start[0].channel, "sms");
        let s = [
            seen(1, "websocket", Status::Sent),
            seen(2, "wechat", Status::Failed),
            seen(3, "sms", Status::Failed),
        ];
        // Every provider failed; the receiver was offline: wait on the websocket step.
        let d = decide(&chain(), at(2, 0), &s, 5, false, &mut ready);
        assert_eq!(d.state, RouteState::Running);
        assert_eq!(d.progress, at(0, 5));
        let d = decide(&chain(), d.progress, &s, 120_005, false, &mut ready);
        assert_eq!(d.state, RouteState::Exhausted);
        assert_eq!(d.log.last().unwrap().event, "exhausted");
    }

    #[test]
    fn unusable_steps_are_born_failed_and_skipped() {
        let mut probe = |s: &Step| match s.channel.as_str() {
            "wechat" => Probe::Skip("no_address".into()),
            "sms" => Probe::Skip("over_quota".into()),
            _ => ready(s),
        };
        let d = decide(&chain(), NOT_STARTED, &[], 0, false, &mut probe);
        let born: Vec<_> = d
            .start
            .iter()
            .map(|s| (s.channel.as_str(), s.failed.as_deref()))
            .collect();
        assert_eq!(
            born,
            [
                ("websocket", None),
                ("wechat", Some("no_address")),
                ("sms", Some("over_quota"))
            ]
        );
        // Offline and nothing else works: the chain waits on the websocket step after all.
        assert_eq!(d.state, RouteState::Running);
        assert_eq!(d.progress, at(0, 0));
        assert_eq!(d.due_at_ms, Some(120_000));
        // … once: when that wait ends too, the chain is exhausted.
        let s = [
            seen(1, "websocket", Status::Sent),
            seen(2, "wechat", Status::Failed),
            seen(3, "sms", Status::Failed),
        ];
        let d = decide(&chain(), d.progress, &s, 120_000, false, &mut probe);
        assert_eq!(d.state, RouteState::Exhausted);
    }

    #[test]
    fn a_timed_out_pending_provider_delivery_is_superseded() {
        let steps = vec![
            Step {
                channel: "sms".into(),
                wait_ms: Some(60_000),
            },
            Step {
                channel: "mail".into(),
                wait_ms: None,
            },
        ];
        let s = [seen(7, "sms", Status::Pending)];
        let d = decide(&steps, at(0, 0), &s, 60_000, false, &mut ready);
        assert_eq!(d.supersede.len(), 1);
        assert_eq!(d.supersede[0].0, 7);
        assert_eq!(d.start[0].channel, "mail");
    }

    #[test]
    fn policies_load_from_herald_toml() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(
            &file,
            r#"
[routing.templates.report_ready]
policy = "failover"
steps = [{ channel = "websocket", wait = "2m" }, { channel = "sms" }]
[routing.types.3]
policy = "all"
steps = [{ channel = "websocket" }]
"#,
        )
        .unwrap();
        let s =
            crate::config::Settings::load_from(Some(&file), vec![], &Default::default()).unwrap();
        let r = &s.routing;
        let t = r.default_for(Some("report_ready"), 3).unwrap();
        assert_eq!(t.policy, PolicyKind::Failover);
        assert_eq!(t.steps[0].wait.as_deref(), Some("2m"));
        assert_eq!(r.default_for(None, 3).unwrap().policy, PolicyKind::All);
        assert_eq!(
            r.default_for(Some("other"), 3).unwrap().policy,
            PolicyKind::All
        );
        assert!(r.default_for(None, 4).is_none());
        let known = |c: &str| {
            if c == "websocket" {
                Ok(())
            } else {
                Err(format!("unknown channel instance `{c}`"))
            }
        };
        let err = r.validate(&known).unwrap_err();
        assert!(
            err.starts_with("routing.templates.report_ready.steps[1].channel"),
            "{err}"
        );
    }

    #[test]
    fn specs_validate_with_field_names() {
        let known = |c: &str| {
            if ["websocket", "sms"].contains(&c) {
                Ok(())
            } else {
                Err(format!("unknown channel `{c}`"))
            }
        };
        let spec = |policy, steps: &[(&str, Option<&str>)]| PolicySpec {
            policy,
            steps: steps
                .iter()
                .map(|(c, w)| StepSpec {
                    channel: c.to_string(),
                    wait: w.map(str::to_owned),
                })
                .collect(),
        };
        let ok = spec(
            PolicyKind::Failover,
            &[("websocket", Some("2m")), ("sms", None)],
        )
        .validate(&known)
        .unwrap();
        assert_eq!(ok.steps[0].wait_ms, Some(120_000));
        let err = |s: PolicySpec| s.validate(&known).unwrap_err().0;
        assert_eq!(err(spec(PolicyKind::Failover, &[])), "steps");
        assert_eq!(
            err(spec(PolicyKind::Failover, &[("nope", None)])),
            "steps[0].channel"
        );
        assert_eq!(
            err(spec(PolicyKind::Failover, &[("sms", None), ("sms", None)])),
            "steps[1].channel"
        );
        assert_eq!(
            err(spec(PolicyKind::All, &[("sms", Some("1m"))])),
            "steps[0].wait"
        );
        assert_eq!(
            err(spec(PolicyKind::Failover, &[("sms", Some("soon"))])),
            "steps[0].wait"
        );
        assert_eq!(
            err(spec(PolicyKind::Failover, &[("sms", Some("90days"))])),
            "steps[0].wait"
        );
    }
}

//! Helpers for testing channels and the code that drives them.
//!
//! [`ScriptedChannel`] records every delivery it is handed and answers with scripted
//! outcomes (then `Sent` once the script is used up), so dispatcher behaviour can be tested
//! without a network. [`ManualClock`] is a [`Clock`] that moves only when told to.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use crate::clock::Clock;
use crate::{
    async_trait, Accepted, Channel, ChannelError, MessageView, Outgoing, Rendered, Services,
};

/// A [`Clock`] that moves only when told to ([`ManualClock::advance`]); clones share the
/// time. Its wall clock starts where it is told ([`ManualClock::at`]), by default at the
/// present (whole milliseconds); its monotonic clock at the moment it was made.
#[derive(Debug, Clone)]
pub struct ManualClock {
    start: Instant,
    wall: SystemTime,
    offset: Arc<Mutex<Duration>>,
}

impl Default for ManualClock {
    /// Starts at the present, in whole milliseconds.
    fn default() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        ManualClock::at(UNIX_EPOCH + Duration::from_millis(now.as_millis() as u64))
    }
}

impl ManualClock {
    /// A clock whose wall time reads `wall` until moved.
    pub fn at(wall: SystemTime) -> Self {
        ManualClock {
            start: Instant::now(),
            wall,
            offset: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    /// A clock whose wall time reads `secs` seconds after the Unix epoch until moved.
    pub fn at_unix_secs(secs: u64) -> Self {
        ManualClock::at(UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Move both clocks forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }

    /// Services lending this clock, as a host would ([`crate::clock::from_services`]).
    pub fn services(&self) -> Services {
        let mut services = Services::default();
        self.lend(&mut services);
        services
    }

    /// Lend this clock through `services`.
    pub fn lend(&self, services: &mut Services) {
        services.insert::<Arc<dyn Clock>>(Arc::new(self.clone()));
    }

    fn offset(&self) -> Duration {
        *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Clock for ManualClock {
    fn instant(&self) -> Instant {
        self.start + self.offset()
    }
    fn wall(&self) -> SystemTime {
        self.wall + self.offset()
    }
}

/// A message view for tests.
pub fn message(title: &str, content: &str) -> Arc<MessageView> {
    Arc::new(MessageView {
        id: "0190f5c2-0000-7000-8000-000000000001".into(),
        title: title.into(),
        content: content.into(),
        msg_type: 0,
        sender: "test".into(),
        created_at: "2026-01-01T00:00:00.000Z".into(),
        template: None,
        data: None,
    })
}

/// A first-attempt delivery of `message` to `receiver` at `address`, for channel tests.
pub fn outgoing(message: Arc<MessageView>, receiver: &str, address: Option<&str>) -> Outgoing {
    Outgoing {
        delivery_id: 1,
        message,
        receiver: receiver.into(),
        address: address.map(str::to_owned),
        rendered: None,
        attempt: 1,
        devices: Vec::new(),
        dead_devices: Default::default(),
    }
}

/// A delivery to a receiver's devices (push channels), for channel tests.
pub fn to_devices(message: Arc<MessageView>, receiver: &str, tokens: &[&str]) -> Outgoing {
    let mut out = outgoing(message, receiver, None);
    out.devices = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| crate::Device {
            id: i as i64 + 1,
            token: (*t).to_owned(),
        })
        .collect();
    out
}

/// Rendered template parts from `(part, text)` pairs, for channel tests.
pub fn rendered(parts: &[(&str, &str)]) -> Arc<Rendered> {
    Arc::new(Rendered::new(
        parts
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    ))
}

#[derive(Default)]
pub struct ScriptedChannel {
    script: Mutex<VecDeque<Result<Accepted, ChannelError>>>,
    seen: Mutex<Vec<Outgoing>>,
}

impl ScriptedChannel {
    pub fn new(script: impl IntoIterator<Item = Result<Accepted, ChannelError>>) -> Self {
        Self {
            script: Mutex::new(script.into_iter().collect()),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Every delivery handed over so far, in order.
    pub fn seen(&self) -> Vec<Outgoing> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Channel for ScriptedChannel {
    async fn send(&self, out: &Outgoing) -> Result<Accepted, ChannelError> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(out.clone());
        }
        self.script
            .lock()
            .ok()
            .and_then(|mut s| s.pop_front())
            .unwrap_or(Ok(Accepted::Sent { provider_id: None }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out() -> Outgoing {
        outgoing(message("t", "c"), "42", None)
    }

    #[test]
    fn script_then_default() {
        let ch = ScriptedChannel::new([Err(ChannelError::transient("down"))]);
        let fut = async {
            let batch = ch.send_batch(&[out(), out()]).await;
            assert!(batch[0].as_ref().unwrap_err().is_retryable());
            assert_eq!(batch[1], Ok(Accepted::Sent { provider_id: None }));
        };
        block_on(fut);
        assert_eq!(ch.seen().len(), 2);
    }

    #[test]
    fn manual_clock_moves_when_told_and_clones_share_it() {
        let clock = ManualClock::at_unix_secs(1_800_000_000);
        let copy = clock.clone();
        let start = copy.instant();
        assert_eq!(copy.unix_secs(), 1_800_000_000);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(copy.now_ms(), 1_800_000_001_500);
        assert_eq!(copy.instant() - start, Duration::from_millis(1_500));
        let now = ManualClock::default();
        let since_epoch = now.wall().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(
            since_epoch.subsec_nanos() % 1_000_000,
            0,
            "whole milliseconds"
        );
    }

    /// A minimal executor: the futures here never pend.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }
}

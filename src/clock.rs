//! Wall-clock time for the outbox (due times, backoff), injectable so tests can move time
//! without sleeping. The one clock of Herald and its channels is the SDK's
//! (`herald_channel::clock`): `Clock::now_ms` is milliseconds since the Unix epoch,
//! `ManualClock` moves only when told (tests; it starts at the present).

pub use herald_channel::clock::{Clock, SystemClock};
pub use herald_channel::testkit::ManualClock;

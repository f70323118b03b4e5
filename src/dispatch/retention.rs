//! Inbox retention (`[inbox] retention`, docs/configuration.md): old entries that are
//! read, archived or deleted (and unread ones with `retention_unread`) are removed in
//! batches of `retention_batch`, one transaction each, every `retention_interval`. Every
//! cluster node runs it; the batches are safe to run concurrently.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::InboxSettings;
use crate::model::now_ms;
use crate::store::Store;

/// Runs until `stop`; does nothing when retention is unset.
pub async fn run(store: Arc<dyn Store>, settings: InboxSettings, stop: CancellationToken) {
    let Some(retention) = settings.retention else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.retention_interval) => {}
        }
        let cutoff = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let mut removed = 0u64;
        loop {
            if stop.is_cancelled() {
                return;
            }
            match store
                .inbox_prune(cutoff, settings.retention_unread, settings.retention_batch)
                .await
            {
                Ok(n) => {
                    removed += n;
                    if n < u64::from(settings.retention_batch) {
                        break;
                    }
                    // Let other writers in between batches.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inbox retention failed; retried at the next interval");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "inbox retention removed old entries");
        }
    }
}

//! Vendor delivery receipts (`POST /api/v1/callbacks/…`, verified by the channel) become
//! status changes like any other: forward only, `delivered` or `failed`.

use herald_channel::{ChannelError, Receipt, ReceiptFor};

use super::Dispatcher;
use crate::model::{Status, StatusChange};
use crate::store::StoreError;

impl Dispatcher {
    /// Record the receipts a channel instance verified. A receipt names a delivery of this
    /// instance (its id came in the signed callback URL) or the provider's message id;
    /// receipts for unknown deliveries are ignored (logged).
    pub async fn apply_receipts(
        &self,
        instance: &str,
        receipts: Vec<Receipt>,
    ) -> Result<(), StoreError> {
        for receipt in receipts {
            let (target, status, error) = match receipt {
                Receipt::Delivered(t) => (t, Status::Delivered, None),
                // A failure receipt is final: a kind that would be retried at send time
                // (e.g. "handset unreachable") reads as permanent here, with its code.
                Receipt::Failed(t, e) => {
                    let e = if e.is_retryable() {
                        let p = ChannelError::permanent(e.message());
                        match e.code() {
                            Some(c) => p.with_code(c),
                            None => p,
                        }
                    } else {
                        e
                    };
                    (t, Status::Failed, Some(e.to_string()))
                }
            };
            let delivery_id = match target {
                // Only a delivery of this instance (the id came in the signed callback URL).
                ReceiptFor::Delivery(id) => self
                    .inner
                    .store
                    .delivery_channel(id)
                    .await?
                    .filter(|c| *c == instance)
                    .map(|_| id),
                ReceiptFor::Provider(pid) => {
                    self.inner
                        .store
                        .delivery_by_provider_id(instance, &pid)
                        .await?
                }
            };
            let Some(delivery_id) = delivery_id else {
                tracing::info!(channel = %instance, "receipt for an unknown delivery ignored");
                continue;
            };
            self.record(
                instance,
                StatusChange::Delivery {
                    delivery_id,
                    status,
                    error,
                    count_attempt: false,
                },
            )
            .await;
        }
        Ok(())
    }
}

//! Boxes in the server: the lease services (`vendbox_service::Boxes`, which hold the rules),
//! re-exported for the routes, the worker that runs their expiry rounds and sweeps, and the
//! one that charges SecretVM's VMs by the period and stops those their balance cannot pay.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use vendbox_service::{
    Boxes, DEFAULT_EXEC_TIMEOUT, Extension, MAX_DOWNLOAD_BYTES, MAX_EXEC_TIMEOUT, MAX_OUTPUT_BYTES,
    Provisioned, Ran, Reconciled, SshKey,
};

use crate::worker::{Next, WorkResult, Worker};

/// How often the expiry worker looks for leases whose time ran out.
pub const EXPIRY_INTERVAL: Duration = Duration::from_millis(500);

/// How often the expiry worker also sweeps boxes whose lease ended but that are still there.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The expiry worker: ends leases whose time ran out, and every [`SWEEP_INTERVAL`] destroys
/// boxes left behind by a failed destruction.
#[derive(Debug)]
pub struct BoxExpiry {
    /// The boxes.
    pub boxes: Arc<Boxes>,
    /// When it last swept.
    pub swept: std::sync::Mutex<Option<std::time::Instant>>,
}

impl BoxExpiry {
    /// The worker for `boxes`.
    pub fn new(boxes: Arc<Boxes>) -> BoxExpiry {
        BoxExpiry { boxes, swept: std::sync::Mutex::new(None) }
    }

    fn sweep_due(&self) -> bool {
        let mut swept = self.swept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = swept.is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL);
        if due {
            *swept = Some(std::time::Instant::now());
        }
        due
    }
}

#[async_trait]
impl Worker for BoxExpiry {
    fn name(&self) -> &'static str {
        "box-expiry"
    }

    async fn work(&self) -> WorkResult {
        let ended = self.boxes.expire_due().await.map_err(|e| e.to_string())?;
        if self.sweep_due() {
            let swept = self.boxes.sweep().await.map_err(|e| e.to_string())?;
            if swept > 0 {
                tracing::warn!(swept, "destroyed boxes whose lease had ended");
            }
        }
        Ok(if ended > 0 { Next::Busy } else { Next::Idle(EXPIRY_INTERVAL) })
    }
}

/// How often the VM billing worker looks for VMs whose period ended.
pub const BILLING_INTERVAL: Duration = Duration::from_millis(500);

/// The VM billing worker: charges each running SecretVM VM its next period from its owner's
/// credits, and stops a VM whose balance cannot pay it.
#[derive(Debug)]
pub struct VmBilling {
    /// The VMs.
    pub vms: vendbox_service::Vms,
}

#[async_trait]
impl Worker for VmBilling {
    fn name(&self) -> &'static str {
        "vm-billing"
    }

    async fn work(&self) -> WorkResult {
        let looked = self.vms.bill_due().await.map_err(|e| e.to_string())?;
        Ok(if looked >= vendbox_service::vms::BILLING_BATCH as usize {
            Next::Busy
        } else {
            Next::Idle(BILLING_INTERVAL)
        })
    }
}

//! SecretVM's VMs (migrations 0011 and 0014): one row per VM and one per box of it, its status changed by compare-and-set on
//! the status it had, so a launch finishing and a billing round stopping it cannot both win.

/// Writes the VM methods of `$store`, whose `pool` is a pool of database `$db`.
macro_rules! impl_vms {
    ($store:ty, $db:ty) => {
        impl $store {
            fn vm_from_row(r: &<$db as sqlx::Database>::Row) -> $crate::StoreResult<$crate::SecretVm> {
                use sqlx::Row;
                use $crate::shared::{from_ms, parse_text};
                let lease: Option<String> = r.try_get("lease_id")?;
                let billed_until: Option<i64> = r.try_get("billed_until")?;
                let port: i64 = r.try_get("port")?;
                Ok($crate::SecretVm {
                    id: r.try_get("id")?,
                    owner: vendbox_core::AccountAddress::parse(r.try_get("owner")?, "secretvm_vms.owner")
                        .map_err(|e| $crate::StoreError::Corrupt(e.to_string()))?,
                    name: r.try_get("name")?,
                    vm_type: r.try_get("vm_type")?,
                    status: r.try_get("status")?,
                    status_reason: r.try_get("status_reason")?,
                    lease: lease.map(|l| parse_text(&l, "secretvm_vms.lease_id")).transpose()?,
                    port: u16::try_from(port)
                        .map_err(|_| $crate::StoreError::Corrupt(format!("secretvm_vms.port {port}")))?,
                    spec: r.try_get("spec")?,
                    billed_until: billed_until.map(from_ms).transpose()?,
                    created_at: from_ms(r.try_get("created_at")?)?,
                    updated_at: from_ms(r.try_get("updated_at")?)?,
                })
            }

            async fn insert_secret_vm(&self, vm: &$crate::SecretVm) -> $crate::StoreResult<()> {
                use $crate::shared::ms;
                sqlx::query(
                    "INSERT INTO secretvm_vms (id, owner, name, vm_type, status, status_reason, lease_id, \
                     port, spec, billed_until, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(&vm.id)
                .bind(vm.owner.as_str())
                .bind(&vm.name)
                .bind(&vm.vm_type)
                .bind(&vm.status)
                .bind(vm.status_reason.as_deref())
                .bind(vm.lease.map(|l| l.to_string()))
                .bind(i64::from(vm.port))
                .bind(&vm.spec)
                .bind(vm.billed_until.map(ms))
                .bind(ms(vm.created_at))
                .bind(ms(vm.updated_at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn secret_vm(&self, id: &str) -> $crate::StoreResult<Option<$crate::SecretVm>> {
                let row = sqlx::query("SELECT * FROM secretvm_vms WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::vm_from_row).transpose()
            }

            async fn update_secret_vm(
                &self,
                vm: &$crate::SecretVm,
                expected_status: &str,
            ) -> $crate::StoreResult<bool> {
                use $crate::shared::ms;
                let done = sqlx::query(
                    "UPDATE secretvm_vms SET status = $2, status_reason = $3, lease_id = $4, \
                     billed_until = $5, updated_at = $6 WHERE id = $1 AND status = $7",
                )
                .bind(&vm.id)
                .bind(&vm.status)
                .bind(vm.status_reason.as_deref())
                .bind(vm.lease.map(|l| l.to_string()))
                .bind(vm.billed_until.map(ms))
                .bind(ms(vm.updated_at))
                .bind(expected_status)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn secret_vms_billable(
                &self,
                status: &str,
                now: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<$crate::SecretVm>> {
                let rows = sqlx::query(
                    "SELECT * FROM secretvm_vms WHERE status = $1 AND billed_until IS NOT NULL \
                     AND billed_until <= $2 ORDER BY billed_until LIMIT $3",
                )
                .bind(status)
                .bind($crate::shared::ms(now))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::vm_from_row).collect()
            }

            async fn secret_vms_stale(
                &self,
                status: &str,
                updated_before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> $crate::StoreResult<Vec<$crate::SecretVm>> {
                let rows = sqlx::query(
                    "SELECT * FROM secretvm_vms WHERE status = $1 AND updated_at < $2 ORDER BY updated_at LIMIT $3",
                )
                .bind(status)
                .bind($crate::shared::ms(updated_before))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::vm_from_row).collect()
            }

            async fn add_secret_vm_box(
                &self,
                vm_id: &str,
                position: u32,
                service: &str,
                lease: vendbox_core::LeaseId,
            ) -> $crate::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO secretvm_vm_boxes (vm_id, position, service, lease_id) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (vm_id, position) DO NOTHING",
                )
                .bind(vm_id)
                .bind(i64::from(position))
                .bind(service)
                .bind(lease.to_string())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn secret_vm_boxes(
                &self,
                vm_id: &str,
            ) -> $crate::StoreResult<Vec<(String, vendbox_core::LeaseId)>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT service, lease_id FROM secretvm_vm_boxes WHERE vm_id = $1 ORDER BY position",
                )
                .bind(vm_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let lease: String = r.try_get("lease_id")?;
                        Ok((
                            r.try_get("service")?,
                            $crate::shared::parse_text(&lease, "secretvm_vm_boxes.lease_id")?,
                        ))
                    })
                    .collect()
            }
        }
    };
}

pub(crate) use impl_vms;

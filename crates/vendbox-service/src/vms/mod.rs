//! [`Vms`]: SecretVM's agent API without HTTP: who a request is (`x-agent` signatures, see
//! `agent`), a wallet's balance (the same credits ledger as every surface), and VMs: a
//! docker-compose workload ([`compose`]) in a box, charged from the balance by the billing
//! period and stopped, with the reason in its status, when the balance cannot pay the next one.
//!
//! **What a VM is here.** A pod of boxes (`vendbox_box::Pod`): one box per compose service, each
//! a lease of the VM type's offer with the service's own image as its root, made in `depends_on`
//! order. The first service's box is the pod's first box: every other box of the VM is born in
//! its network namespace (services reach each other on 127.0.0.1, and by service name through
//! `/etc/hosts`), and named volumes are directories on its disk, mounted into each service that
//! names them. Nothing outside the VM shares its network or volumes. In each box the service's
//! command runs in the background under a shell loop that keeps its restart policy. The VM is
//! `running` once every service was started; one that cannot be (its image, its box, its start)
//! fails the VM with a reason naming it, and every box made is taken back. The VM's leases are
//! kept in the store (`secretvm_vm_boxes`, in start order), so billing, stopping and a restarted
//! vendbox reach all of them. There is no TEE and no attestation: a VM is a pod of boxes on the
//! operator's host, and its status says so.
//!
//! **Money.** A VM is made only when the wallet's available credit is at least the minimum
//! balance (`AGENT_MIN_BALANCE`, 100 minor units by default). It is charged one billing period
//! (a minute by default) ahead, at its type's `per_minute` price prorated to the period; the
//! ledger entry's reference is the VM and the period's start, so a retried round charges a
//! period once. A period the balance cannot pay in full takes what is left (never more: the
//! ledger refuses a balance below zero) and the VM is stopped with the reason.

pub mod agent;
pub mod compose;
pub mod registry;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use vendbox_box::image::ImageStore;
use vendbox_box::wire::{ProcessSpec, RunRequest};
use vendbox_box::{BoxId, Volume};
use vendbox_core::{AccountAddress, Capability, LeaseId, LedgerKind, Offer, OfferKind, QuoteTerms, Usdc};
use vendbox_store::{SecretVm, Store, StoreError};

use crate::catalog::LiveCatalog;
use crate::clock::{Clock, SystemClock};
use crate::leases::{Boxes, PodPlace};
pub use agent::{FileMeta, create_signing_body, request_hash};
use compose::{Compose, ImageDefaults};
pub use registry::Registry;

/// What a VM's status says of attestation, always.
pub const NO_ATTESTATION: &str =
    "none: vendbox runs no TEE; a VM is a box on the operator's host and nothing about it is attested";

/// The prefix of a request hash kept as an auth nonce (single use within the window).
const HASH_NONCE_PREFIX: &str = "x-agent:";

/// VMs one billing round charges at most (the worker goes again at once when it charged a batch).
pub const BILLING_BATCH: u32 = 64;

/// A VM still `creating` after this long lost its launch (the vendbox making it stopped): the
/// billing round fails it and ends its box, if one was made.
pub const LAUNCH_LIMIT: Duration = Duration::minutes(30);

/// The statuses of a VM.
pub mod status {
    /// Being made: its image pulled, its box made, its services started.
    pub const CREATING: &str = "creating";
    /// Its services were started; it is charged by the period.
    pub const RUNNING: &str = "running";
    /// Stopped: its balance ran out (the reason says so); its box is gone.
    pub const STOPPED: &str = "stopped";
    /// It could not be made (the reason says why); nothing was charged for it.
    pub const FAILED: &str = "failed";
    /// Made with `skip_launch`: recorded, never started, never charged.
    pub const CREATED: &str = "created";
}

/// The operator's SecretVM settings.
#[derive(Debug, Clone)]
pub struct VmSettings {
    /// The least available credit, in minor units, that may make a VM (`AGENT_MIN_BALANCE`).
    pub min_balance: Usdc,
    /// How long one billing period is (a minute by default; tests shorten it).
    pub billing_period: std::time::Duration,
    /// How far an `x-agent-timestamp` may be from the server's clock, either way.
    pub window: std::time::Duration,
    /// The domain whose wildcard names reach the port proxy (`[server] ports_domain`); VM
    /// domains are `{port}-{vm id}.{domain}` under it.
    pub domain: Option<String>,
    /// The public URL, for a VM's address when there is no domain.
    pub public_url: String,
    /// Where images come from.
    pub registry: Registry,
    /// The data directory (its image store, and the images' recorded configs).
    pub data_dir: PathBuf,
}

impl Default for VmSettings {
    fn default() -> Self {
        VmSettings {
            min_balance: Usdc(100),
            billing_period: std::time::Duration::from_mins(1),
            window: std::time::Duration::from_mins(5),
            domain: None,
            public_url: "http://localhost".into(),
            registry: Registry::default(),
            data_dir: PathBuf::from("."),
        }
    }
}

/// Why an agent request was refused.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// An `x-agent-*` header is missing or unreadable.
    #[error("{message}")]
    BadHeader {
        /// The header.
        header: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The signature does not recover to `x-agent-address` over this request.
    #[error(
        "x-agent-signature recovers to {recovered}, not x-agent-address: sign sha256(METHOD + path + body + timestamp) \
         with this wallet, over exactly the body sent (for /api/vm/create the stable JSON of the fields and the \
         file's metadata, its sha256 that of the bytes uploaded)"
    )]
    SignatureMismatch {
        /// Whom it recovers to.
        recovered: String,
    },
    /// The timestamp is too far from the server's clock.
    #[error("x-agent-timestamp is {off_ms} ms from the server's clock; it must be within {window_secs} s")]
    TimestampOutOfWindow {
        /// How far off (positive: in the future).
        off_ms: i64,
        /// The window, either way.
        window_secs: i64,
    },
    /// This very request (its hash) was served before.
    #[error("this request was already made (its hash is used); sign it again with a fresh x-agent-timestamp")]
    Replayed,
    /// The balance is below the minimum to make a VM.
    #[error(
        "Insufficient balance: {balance} minor units available, {min} needed to create a VM; top up with POST /api/agent/add-funds"
    )]
    InsufficientBalance {
        /// Available now, in minor units.
        balance: Usdc,
        /// The minimum.
        min: Usdc,
    },
    /// A field of the request is missing or wrong.
    #[error("{message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An option vendbox cannot honour.
    #[error("{message}")]
    Unsupported {
        /// The field.
        field: String,
        /// Why.
        message: String,
    },
    /// The compose file cannot be run.
    #[error("{0}")]
    Compose(String),
    /// The VM type is not one this vendbox has.
    #[error("vmTypeId `{0}` is not a VM type of this vendbox")]
    UnknownVmType(String),
    /// No VM with this id belongs to the caller.
    #[error("there is no VM `{0}`")]
    NotFound(String),
    /// This vendbox runs no boxes.
    #[error("this vendbox runs no VMs: {0}")]
    Unavailable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl VmError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            VmError::BadHeader { .. } => "bad_agent_header",
            VmError::SignatureMismatch { .. } => "signature_mismatch",
            VmError::TimestampOutOfWindow { .. } => "timestamp_out_of_window",
            VmError::Replayed => "request_replayed",
            VmError::InsufficientBalance { .. } => "insufficient_balance",
            VmError::Invalid { .. } => "invalid_request",
            VmError::Unsupported { .. } => "unsupported_option",
            VmError::Compose(_) => "compose_unsupported",
            VmError::UnknownVmType(_) => "unknown_vm_type",
            VmError::NotFound(_) => "vm_not_found",
            VmError::Unavailable(_) => "vms_unavailable",
            VmError::Store(_) => "store_unavailable",
        }
    }

    /// The header or field it is about, if one.
    pub fn field(&self) -> Option<String> {
        match self {
            VmError::BadHeader { header, .. } => Some((*header).to_owned()),
            VmError::SignatureMismatch { .. } => Some("x-agent-signature".into()),
            VmError::TimestampOutOfWindow { .. } => Some("x-agent-timestamp".into()),
            VmError::Invalid { field, .. } | VmError::Unsupported { field, .. } => Some(field.clone()),
            VmError::Compose(_) => Some("dockercompose".into()),
            VmError::UnknownVmType(_) => Some("vmTypeId".into()),
            _ => None,
        }
    }
}

/// An agent request's headers and what it signed, as the HTTP layer read them.
#[derive(Debug, Clone)]
pub struct AgentRequest<'a> {
    /// `x-agent-address`.
    pub address: Option<&'a str>,
    /// `x-agent-signature`.
    pub signature: Option<&'a str>,
    /// `x-agent-timestamp`.
    pub timestamp: Option<&'a str>,
    /// The method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The body as signed (the raw body; for create-vm, [`create_signing_body`]).
    pub body: &'a str,
}

/// A verified agent: its wallet and the request's hash (claimed; give it back after a 402).
#[derive(Debug, Clone)]
pub struct Agent {
    /// The wallet.
    pub account: AccountAddress,
    /// The request's hash.
    pub hash: String,
}

/// A VM to make, as the form said.
#[derive(Debug, Clone)]
pub struct NewVm {
    /// Every form field but the file, as sent.
    pub fields: BTreeMap<String, String>,
    /// The compose file's bytes.
    pub compose: Vec<u8>,
}

/// What a VM runs, kept with it (its `spec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spec {
    /// The services, in start order.
    compose: Compose,
    /// Variables every service gets (`environment` and `secrets_plaintext`).
    extra_env: BTreeMap<String, String>,
    /// Its description.
    description: Option<String>,
    /// Whether its disk was asked to persist (it persists for the VM's life).
    fs_persistence: bool,
}

/// A VM as its owner reads it.
#[derive(Debug, Clone)]
pub struct VmView {
    /// The record.
    pub vm: SecretVm,
    /// Where its page is: `{port}-{id}.{domain}`, or the port proxy's URL without a domain.
    pub domain: String,
    /// Whether it was made with `skip_launch`.
    pub skip_launch: bool,
}

/// SecretVM's agents and VMs.
#[derive(Debug, Clone)]
pub struct Vms {
    store: Arc<dyn Store>,
    boxes: Result<Arc<Boxes>, Arc<str>>,
    /// The VM types: the catalog's box offers, as they are sold now.
    catalog: LiveCatalog,
    settings: Arc<VmSettings>,
    clock: Arc<dyn Clock>,
}

impl Vms {
    /// VMs kept in `store`, run in `boxes` (or why there are none), of the VM types `catalog`
    /// sells now (its box offers; a `vmTypeId` is an offer id).
    pub fn new(
        store: Arc<dyn Store>,
        boxes: Result<Arc<Boxes>, Arc<str>>,
        catalog: LiveCatalog,
        settings: VmSettings,
    ) -> Vms {
        Vms { store, boxes, catalog, settings: Arc::new(settings), clock: Arc::new(SystemClock) }
    }

    /// The same, telling time by `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Vms {
        self.clock = clock;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &VmSettings {
        &self.settings
    }

    /// The wallet that signed `request`, once its timestamp is in the window and its hash was
    /// claimed (the last step: a request refused for another reason uses nothing up).
    pub async fn verify(&self, request: &AgentRequest<'_>) -> Result<Agent, VmError> {
        fn header<'a>(value: Option<&'a str>, name: &'static str) -> Result<&'a str, VmError> {
            value.map(str::trim).filter(|v| !v.is_empty()).ok_or_else(|| VmError::BadHeader {
                header: name,
                message: format!(
                    "{name} is required: sign every request as the SecretVM agent API describes"
                ),
            })
        }
        let address = header(request.address, "x-agent-address")?;
        let signature = header(request.signature, "x-agent-signature")?;
        let timestamp = header(request.timestamp, "x-agent-timestamp")?;
        let account = AccountAddress::parse(address, "x-agent-address").map_err(|_| VmError::BadHeader {
            header: "x-agent-address",
            message: "x-agent-address must be 0x and 40 hex digits".into(),
        })?;
        let number: i64 = timestamp.parse().map_err(|_| VmError::BadHeader {
            header: "x-agent-timestamp",
            message: "x-agent-timestamp must be Unix time in milliseconds (or seconds)".into(),
        })?;
        // Seconds are taken too, as the seed allows ("milliseconds preferred").
        let ms = if number.abs() < 100_000_000_000 { number.saturating_mul(1000) } else { number };
        let signed_at = DateTime::<Utc>::from_timestamp_millis(ms).ok_or_else(|| VmError::BadHeader {
            header: "x-agent-timestamp",
            message: "x-agent-timestamp is out of range".into(),
        })?;
        let now = self.clock.now_ms();
        let window = Duration::from_std(self.settings.window).unwrap_or(Duration::minutes(5));
        let off = signed_at - now;
        if off.abs() > window {
            return Err(VmError::TimestampOutOfWindow {
                off_ms: off.num_milliseconds(),
                window_secs: window.num_seconds(),
            });
        }
        let hash = request_hash(request.method, request.path, request.body, timestamp);
        let recovered = agent::signer_of(&hash, signature).map_err(|e| VmError::BadHeader {
            header: "x-agent-signature",
            message: format!("x-agent-signature is not a 65-byte signature in hex: {e}"),
        })?;
        if recovered != account.as_str() {
            return Err(VmError::SignatureMismatch { recovered });
        }
        // Kept until the timestamp leaves the window: after that the timestamp refuses it.
        let nonce = format!("{HASH_NONCE_PREFIX}{hash}");
        if !self.store.claim_auth_nonce(&account, &nonce, signed_at + window, now).await? {
            return Err(VmError::Replayed);
        }
        Ok(Agent { account, hash })
    }

    /// Gives back the hash of a request answered 402 (it did nothing and charged nothing), so
    /// that the same signed request may be sent again with a payment, as the seed's client does.
    pub async fn release(&self, agent: &Agent) {
        let nonce = format!("{HASH_NONCE_PREFIX}{}", agent.hash);
        if let Err(e) = self.store.release_auth_nonce(&agent.account, &nonce).await {
            tracing::warn!(error = %e, "the hash of an agent request answered 402 could not be given back");
        }
    }

    /// The wallet's balance in minor units (the ledger's sum; credits held for purchases in
    /// progress are not subtracted, as the seed's balance is the account's).
    pub async fn balance(&self, account: &AccountAddress) -> Result<Usdc, VmError> {
        Ok(self.store.funds(account, self.clock.now()).await?.balance)
    }

    /// The VM type `id`, as a VM is made of it now: a box offer of the catalog, available.
    fn vm_type(&self, id: &str) -> Result<Offer, VmError> {
        self.priced_type(id).filter(|o| o.available).ok_or_else(|| VmError::UnknownVmType(id.to_owned()))
    }

    /// The VM type `id` as its running VMs are charged: whether or not a VM can be made of it
    /// now (an image its default names gone since, say), a VM running already still pays.
    fn priced_type(&self, id: &str) -> Option<Offer> {
        let catalog = self.catalog.now();
        catalog.offer(id).ok().filter(|o| matches!(o.kind, OfferKind::Sandbox | OfferKind::Machine)).cloned()
    }

    /// Makes a VM for `owner` from `new`: checks the fields, the compose file and the balance,
    /// records it `creating` (or `created` with `skip_launch`) and launches it in the
    /// background; its status says when it runs or why it failed.
    pub async fn create(&self, owner: &AccountAddress, new: NewVm) -> Result<VmView, VmError> {
        let field = |name: &str| new.fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let invalid = |f: &str, message: String| VmError::Invalid { field: f.to_owned(), message };
        let name = field("name").ok_or_else(|| invalid("name", "`name` is required".into()))?;
        if name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(invalid(
                "name",
                "`name` is at most 100 characters, without control characters".into(),
            ));
        }
        let vm_type =
            field("vmTypeId").ok_or_else(|| invalid("vmTypeId", "`vmTypeId` is required".into()))?;
        let offer = self.vm_type(vm_type)?;
        refuse_unsupported(&new.fields)?;
        let flag = |f: &str| {
            field(f).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        };
        let skip_launch = flag("skip_launch");
        let compose = Compose::parse(&new.compose).map_err(VmError::Compose)?;
        for s in &compose.services {
            registry::Reference::parse(&s.image).map_err(VmError::Compose)?;
            for volume in volumes_of(s) {
                volume.check().map_err(|e| VmError::Compose(format!("service `{}`: {e}", s.name)))?;
            }
        }
        let mut extra_env = BTreeMap::new();
        for f in ["environment", "secrets_plaintext"] {
            if let Some(text) = new.fields.get(f) {
                extra_env.extend(compose::dotenv(text, f).map_err(|m| invalid(f, m))?);
            }
        }
        if !skip_launch {
            if let Err(e) = &self.boxes {
                return Err(VmError::Unavailable(e.to_string()));
            }
            let funds = self.store.funds(owner, self.clock.now()).await?;
            if funds.available() < self.settings.min_balance {
                return Err(VmError::InsufficientBalance {
                    balance: funds.available(),
                    min: self.settings.min_balance,
                });
            }
        }
        let spec = Spec {
            compose: compose.clone(),
            extra_env,
            description: field("description").map(str::to_owned),
            fs_persistence: flag("fs_persistence"),
        };
        let now = self.clock.now();
        let vm = SecretVm {
            id: uuid::Uuid::new_v4().to_string(),
            owner: owner.clone(),
            name: name.to_owned(),
            vm_type: vm_type.to_owned(),
            status: if skip_launch { status::CREATED } else { status::CREATING }.to_owned(),
            status_reason: None,
            lease: None,
            port: compose.port(),
            spec: serde_json::to_string(&spec).map_err(|e| VmError::Compose(e.to_string()))?,
            billed_until: None,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_secret_vm(&vm).await?;
        if !skip_launch {
            let vms = self.clone();
            let launching = vm.clone();
            tokio::spawn(async move { vms.launch(launching, spec, offer).await });
        }
        Ok(self.view(vm))
    }

    /// `owner`'s VM `id`; [`VmError::NotFound`] for one that is missing or another's.
    pub async fn get(&self, owner: &AccountAddress, id: &str) -> Result<VmView, VmError> {
        let vm = self.store.secret_vm(id).await?.filter(|vm| vm.owner == *owner);
        vm.map(|vm| self.view(vm)).ok_or_else(|| VmError::NotFound(id.to_owned()))
    }

    fn view(&self, vm: SecretVm) -> VmView {
        let domain = match &self.settings.domain {
            Some(domain) => format!("{}-{}.{}", vm.port, vm.id, domain.trim_start_matches('.')),
            None => format!(
                "{}/v1/boxes/{}/ports/{}/",
                self.settings.public_url.trim_end_matches('/'),
                vm.id,
                vm.port
            ),
        };
        let skip_launch = vm.status == status::CREATED;
        VmView { vm, domain, skip_launch }
    }

    /// The lease of the running VM `id` when `port` is its published port: reachable by anyone
    /// through the port proxy (a VM's page is public, as SecretVM's are).
    pub async fn public_lease(&self, id: &str, port: u16) -> Option<vendbox_core::Lease> {
        let vm = self.store.secret_vm(id).await.ok()??;
        if vm.status != status::RUNNING || vm.port != port {
            return None;
        }
        let boxes = self.boxes.as_ref().ok()?;
        boxes.lease(vm.lease?).await.ok()?
    }

    /// Brings `vm` up: its image (pulled if missing), its first period charged, its box made,
    /// its services started; `running`, or `failed` with the reason (its box taken back).
    async fn launch(&self, mut vm: SecretVm, spec: Spec, offer: Offer) {
        let outcome = self.bring_up(&mut vm, &spec, &offer).await;
        let expected = vm.status.clone();
        match outcome {
            Ok(()) => {
                status::RUNNING.clone_into(&mut vm.status);
                tracing::info!(vm = %vm.id, lease = ?vm.lease, "VM running");
            }
            Err(reason) => {
                tracing::warn!(vm = %vm.id, %reason, "a VM could not be launched");
                self.take_down(&vm).await;
                let ended = if vm.status_reason.is_some() { status::STOPPED } else { status::FAILED };
                ended.clone_into(&mut vm.status);
                vm.status_reason.get_or_insert(reason);
            }
        }
        vm.updated_at = self.clock.now();
        if !matches!(self.store.update_secret_vm(&vm, &expected).await, Ok(true)) {
            tracing::warn!(vm = %vm.id, "a launched VM changed meanwhile (or the store failed); taking its box back");
            self.take_down(&vm).await;
        }
    }

    async fn bring_up(&self, vm: &mut SecretVm, spec: &Spec, offer: &Offer) -> Result<(), String> {
        let boxes = self.boxes.as_ref().map_err(ToString::to_string)?.clone();
        // Every image first (pulled when missing): a VM one of whose images cannot be had makes
        // no box at all.
        let mut images: BTreeMap<String, (String, ImageDefaults)> = BTreeMap::new();
        for service in &spec.compose.services {
            if !images.contains_key(&service.image) {
                let image = self
                    .image(&service.image)
                    .await
                    .map_err(|e| format!("service `{}`: {e}", service.name))?;
                images.insert(service.image.clone(), image);
            }
        }
        let names: Vec<String> = spec.compose.services.iter().map(|s| s.name.clone()).collect();
        let mut first: Option<BoxId> = None;
        for (position, service) in spec.compose.services.iter().enumerate() {
            let name = &service.name;
            let (store_name, defaults) = &images[&service.image];
            let script = service.script(defaults, &spec.extra_env, &names)?;
            let terms = QuoteTerms {
                minutes: None,
                actions: None,
                region: None,
                image: Some(store_name.clone()),
                price: Usdc::ZERO,
            };
            let place = PodPlace { first: first.clone(), volumes: volumes_of(service) };
            let made = boxes
                .provision_in(offer, &terms, None, &[], &[Capability::Root], Some(place))
                .await
                .map_err(|e| format!("service `{name}`: its box could not be made: {e}"))?;
            // Written at once, so that a launch cut off from here on leaves boxes that can be found.
            let position = u32::try_from(position).unwrap_or(u32::MAX);
            self.store
                .add_secret_vm_box(&vm.id, position, name, made.lease.id)
                .await
                .map_err(|e| format!("service `{name}`: its box could not be recorded: {e}"))?;
            if first.is_none() {
                let box_id = made.lease.box_id.as_deref().and_then(|id| BoxId::new(id).ok());
                first = Some(box_id.ok_or_else(|| format!("service `{name}`: its lease names no box"))?);
                vm.lease = Some(made.lease.id);
                vm.updated_at = self.clock.now();
                self.store.update_secret_vm(vm, status::CREATING).await.map_err(|e| e.to_string())?;
            }
            let client = boxes.boxd(&made.lease).map_err(|e| e.to_string())?;
            let request = RunRequest {
                process: ProcessSpec {
                    cmd: "/bin/sh".into(),
                    args: vec!["-c".into(), script],
                    timeout_ms: Some(30_000),
                    tag: Some(format!("vm-service-{name}")),
                    ..ProcessSpec::default()
                },
                max_output_bytes: 64 * 1024,
            };
            let ran = client
                .run(&request)
                .await
                .map_err(|e| format!("service `{name}` could not be started: {e}"))?;
            if ran.exit_code != Some(0) {
                return Err(format!("service `{name}` could not be started: {}", ran.stderr.trim()));
            }
        }
        // The first period is charged once it runs (a VM that failed to start costs nothing);
        // a balance spent elsewhere meanwhile stops it at once.
        let start = self.clock.now();
        if !self.charge_period(vm, offer, start).await.map_err(|e| e.to_string())? {
            vm.status_reason = Some(stopped_reason(self.clock.now()));
            return Err(vm.status_reason.clone().unwrap_or_default());
        }
        Ok(())
    }

    /// Image `image` in the image store (pulled from the registry when missing): its store
    /// name and what it says to run.
    async fn image(&self, image: &str) -> Result<(String, ImageDefaults), String> {
        let (registry, data_dir, image) =
            (self.settings.registry.clone(), self.settings.data_dir.clone(), image.to_owned());
        tokio::task::spawn_blocking(move || {
            let defaults_dir = data_dir.join("secretvm").join("images");
            std::fs::create_dir_all(&defaults_dir)
                .map_err(|e| format!("making {}: {e}", defaults_dir.display()))?;
            registry.ensure(&ImageStore::of_data_dir(&data_dir), &defaults_dir, &image)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The leases of `vm`'s boxes as (service, lease), in start order (the pod's first box
    /// first); a VM recorded before VMs had a box per service has only `vm.lease`.
    async fn leases(&self, vm: &SecretVm) -> Result<Vec<(String, LeaseId)>, StoreError> {
        let mut leases = self.store.secret_vm_boxes(&vm.id).await?;
        if let Some(lease) = vm.lease.filter(|l| !leases.iter().any(|(_, known)| known == l)) {
            leases.insert(0, ("vm".to_owned(), lease));
        }
        Ok(leases)
    }

    /// Charges `vm` the period starting at `from` (at its type's per-minute price, prorated),
    /// and moves its `billed_until` to the period's end; `false` when the balance could not pay
    /// it in full (what was left was taken).
    async fn charge_period(
        &self,
        vm: &mut SecretVm,
        offer: &Offer,
        from: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let period_ms = u64::try_from(self.settings.billing_period.as_millis()).unwrap_or(u64::MAX).max(1);
        let price = offer.price.per_minute.mul_div_ceil(period_ms, 60_000).unwrap_or(Usdc(u64::MAX));
        let reference = format!("secretvm:{}:{}", vm.id, from.timestamp_millis());
        let balance = self.store.balance(&vm.owner).await?;
        let full = balance >= price;
        let amount = if full { price } else { balance };
        if amount > Usdc::ZERO {
            match self
                .store
                .append_ledger(&vm.owner, LedgerKind::Charge, amount, &reference, self.clock.now())
                .await
            {
                Ok(_) => {}
                // Spent elsewhere meanwhile: the next round takes what is left.
                Err(StoreError::InsufficientBalance { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        let period = Duration::milliseconds(i64::try_from(period_ms).unwrap_or(i64::MAX));
        vm.billed_until = Some(from + period);
        Ok(full)
    }

    /// One billing round: fails VMs whose launch was cut off ([`LAUNCH_LIMIT`]), charges every
    /// running VM whose period ended, and stops those the balance cannot pay; how many running
    /// VMs it looked at.
    pub async fn bill_due(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        for mut vm in self.store.secret_vms_stale(status::CREATING, now - LAUNCH_LIMIT, BILLING_BATCH).await?
        {
            status::FAILED.clone_into(&mut vm.status);
            vm.status_reason =
                Some("its launch was cut off (the vendbox making it stopped); nothing was charged".into());
            vm.updated_at = now;
            if self.store.update_secret_vm(&vm, status::CREATING).await? {
                self.take_down(&vm).await;
            }
        }
        let due = self.store.secret_vms_billable(status::RUNNING, now, BILLING_BATCH).await?;
        for mut vm in due.iter().cloned() {
            let Some(offer) = self.priced_type(&vm.vm_type) else {
                tracing::warn!(vm = %vm.id, vm_type = %vm.vm_type, "a running VM's type is gone; it is not charged");
                continue;
            };
            if let Some(reason) = self.box_gone(&vm).await {
                // Its box ended without it (a restart found it gone): it fails, uncharged.
                status::FAILED.clone_into(&mut vm.status);
                vm.status_reason = Some(reason);
                vm.updated_at = self.clock.now();
                self.store.update_secret_vm(&vm, status::RUNNING).await?;
                continue;
            }
            let from = vm.billed_until.unwrap_or(now);
            let paid = self.charge_period(&mut vm, &offer, from).await?;
            if !paid {
                status::STOPPED.clone_into(&mut vm.status);
                vm.status_reason = Some(stopped_reason(now));
            }
            vm.updated_at = self.clock.now();
            if self.store.update_secret_vm(&vm, status::RUNNING).await? && !paid {
                tracing::info!(vm = %vm.id, owner = %vm.owner, "VM stopped: its balance ran out");
                self.take_down(&vm).await;
            }
        }
        Ok(due.len())
    }

    /// Why the running VM's boxes are no longer all there, if they are not (a lease ended or is
    /// missing), naming the service.
    async fn box_gone(&self, vm: &SecretVm) -> Option<String> {
        let boxes = self.boxes.as_ref().ok()?;
        let leases = self.leases(vm).await.ok()?;
        if leases.is_empty() {
            return Some("its boxes are gone".into());
        }
        for (service, lease) in leases {
            match boxes.lease(lease).await {
                Ok(Some(lease)) if lease.state.is_terminal() => {
                    return Some(format!(
                        "the box of service `{service}` ended ({}){}",
                        lease.state.as_str(),
                        lease.failure_reason.map(|r| format!(": {r}")).unwrap_or_default()
                    ));
                }
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => return Some(format!("the box of service `{service}` is gone")),
            }
        }
        None
    }

    /// Ends every box of the VM, the pod's first box last (the others are in its network and
    /// mount its volumes).
    async fn take_down(&self, vm: &SecretVm) {
        let Ok(boxes) = &self.boxes else { return };
        let leases = match self.leases(vm).await {
            Ok(leases) => leases,
            Err(e) => {
                tracing::warn!(vm = %vm.id, error = %e, "a VM's boxes could not be read; the sweep will end them");
                return;
            }
        };
        for (service, lease) in leases.into_iter().rev() {
            match boxes.lease(lease).await {
                Ok(Some(lease)) => {
                    if let Err(e) = boxes.terminate(&lease).await {
                        tracing::warn!(vm = %vm.id, service, error = %e, "a VM's box could not be ended; the sweep will");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(vm = %vm.id, service, error = %e, "a VM's lease could not be read"),
            }
        }
    }
}

/// The named volumes service `service` mounts.
fn volumes_of(service: &compose::Service) -> Vec<Volume> {
    service.volumes.iter().map(|(name, path)| Volume { name: name.clone(), path: path.clone() }).collect()
}

/// Refuses the seed's options vendbox cannot honour, each with a sentence naming it.
fn refuse_unsupported(fields: &BTreeMap<String, String>) -> Result<(), VmError> {
    const NO_KMS: &str =
        "encrypted secrets need a TEE's KMS, which vendbox does not have; send `secrets_plaintext`";
    const NO_CREDENTIALS: &str =
        "private registry credentials are not taken; images come from the operator's registry";
    let field = |name: &str| fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    for (f, why) in [
        ("secrets_encrypted", NO_KMS),
        ("secrets_key", NO_KMS),
        ("docker_credentials_encrypted", NO_CREDENTIALS),
        ("docker_credentials_key", NO_CREDENTIALS),
        ("custom_domain", "custom domains are not served; the VM is reached at its vmDomain"),
    ] {
        if field(f).is_some() {
            return Err(VmError::Unsupported { field: f.to_owned(), message: why.to_owned() });
        }
    }
    if let Some(registration) = field("eip8004_registration")
        && serde_json::from_str::<serde_json::Value>(registration).is_err()
    {
        return Err(VmError::Invalid {
            field: "eip8004_registration".into(),
            message: "`eip8004_registration` must be a JSON string".into(),
        });
    }
    Ok(())
}

/// The reason a VM whose balance ran out stopped.
fn stopped_reason(at: DateTime<Utc>) -> String {
    format!(
        "stopped at {}: the balance ran out (it never goes below zero); top up with POST /api/agent/add-funds and create a new VM",
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

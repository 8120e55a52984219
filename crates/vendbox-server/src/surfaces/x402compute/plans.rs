//! x402Compute's discovery, path for path: `GET /compute/plans?type=`, `GET /compute/regions` and
//! `GET /compute/os`, from the catalog's `x402compute` offers (a plan is an offer labelled
//! `plan`), its regions and its images (an OS is an image with an `os_id`). An offer whose image
//! this host cannot make is listed with `available: false` and the reason; an OS no available
//! plan sells here is left out.

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use vendbox_core::{Catalog, Offer, OfferKind};

use crate::app::AppState;

/// The surface's offers are those of this `surface`.
pub const SURFACE: &str = "x402compute";

/// One plan, in the seed's shape (with vendbox's hourly rate and availability).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Plan {
    /// The plan's id.
    #[schema(example = "vcg-a100-1c-2g-6gb")]
    pub id: String,
    /// vCPUs.
    pub vcpu_count: u32,
    /// Memory in MiB.
    pub ram: u32,
    /// Disk in GB.
    pub disk: u32,
    /// Monthly transfer in GB.
    pub bandwidth: Option<u32>,
    /// USD per 30-day month.
    pub monthly_cost: f64,
    /// USD per hour (`monthly_cost / 720`, rounded up to the USDC unit): the price of one
    /// `prepaid_hours`.
    pub hourly_cost: f64,
    /// `VPS`, `VHP`, `VDC` or `GPU`.
    #[serde(rename = "type")]
    pub kind: String,
    /// GPU memory in GB, for GPU plans.
    pub gpu_vram_gb: Option<u32>,
    /// GPU model, for GPU plans.
    pub gpu_type: Option<String>,
    /// Regions it runs in.
    pub locations: Vec<String>,
    /// Whether this vendbox can provision it now.
    pub available: bool,
    /// Why not, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
}

/// The seed's plan list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Plans {
    /// The plans.
    pub plans: Vec<Plan>,
    /// How many.
    pub count: usize,
}

/// `?type=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PlanQuery {
    /// `vps`, `vhp`, `vdc` or `vcg` (GPU).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
}

/// One region.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RegionView {
    /// `lax`, `ewr`…
    pub id: String,
    /// The city.
    pub city: Option<String>,
    /// ISO country code.
    pub country: Option<String>,
    /// The continent.
    pub continent: Option<String>,
}

/// The seed's region list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Regions {
    /// The regions some plan runs in.
    pub regions: Vec<RegionView>,
}

/// One OS image.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OsView {
    /// The `os_id` to provision with.
    #[schema(example = 2284)]
    pub id: u32,
    /// `Ubuntu 24.04 LTS x64`.
    pub name: String,
    /// `x64`.
    pub arch: String,
    /// `ubuntu`.
    pub family: String,
}

/// The seed's OS list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OsList {
    /// The images an available plan boots here.
    pub os_options: Vec<OsView>,
}

/// The catalog's x402Compute plans: offers of this surface that make boxes and carry `plan`.
pub fn plan_offers(catalog: &Catalog) -> impl Iterator<Item = &Offer> {
    catalog
        .offers
        .iter()
        .filter(|o| o.surface == SURFACE && matches!(o.kind, OfferKind::Machine | OfferKind::Sandbox))
        .filter(|o| o.labels.contains_key("plan"))
}

#[allow(clippy::cast_precision_loss, reason = "a display price; exact amounts travel as atomic units")]
fn usd(atomic: u64) -> f64 {
    atomic as f64 / 1e6
}

fn plan(offer: &Offer) -> Option<Plan> {
    let hourly = offer.price.price(60, 0).ok()?;
    let gpu = offer.resources.gpu.as_ref();
    Some(Plan {
        id: offer.labels.get("plan")?.clone(),
        vcpu_count: offer.resources.vcpu,
        ram: offer.resources.memory_mb,
        disk: offer.resources.disk_gb,
        bandwidth: offer.resources.bandwidth_gb,
        monthly_cost: usd(offer.price.price(43_200, 0).ok()?.atomic()),
        hourly_cost: usd(hourly.atomic()),
        kind: offer.labels.get("type_name").or_else(|| offer.labels.get("type")).cloned().unwrap_or_default(),
        gpu_vram_gb: gpu.map(|g| g.vram_gb),
        gpu_type: gpu.map(|g| g.model.clone()),
        locations: offer.regions.clone(),
        available: offer.available,
        unavailable_reason: offer.unavailable_reason.clone(),
    })
}

/// Lists the plans with their prices; `?type=` keeps one kind.
#[utoipa::path(get, path = "/compute/plans", operation_id = "listComputePlans", tag = "x402compute",
    params(PlanQuery), responses((status = 200, body = Plans)))]
pub async fn plans(State(state): State<AppState>, Query(query): Query<PlanQuery>) -> Json<Plans> {
    let wanted = query.kind.map(|k| k.trim().to_ascii_lowercase()).filter(|k| !k.is_empty());
    let plans: Vec<Plan> = plan_offers(&state.catalog.now())
        .filter(|o| {
            wanted.as_ref().is_none_or(|w| o.labels.get("type").is_some_and(|t| t.eq_ignore_ascii_case(w)))
        })
        .filter_map(plan)
        .collect();
    Json(Plans { count: plans.len(), plans })
}

/// Lists the regions the plans run in.
#[utoipa::path(get, path = "/compute/regions", operation_id = "listComputeRegions", tag = "x402compute",
    responses((status = 200, body = Regions)))]
pub async fn regions(State(state): State<AppState>) -> Json<Regions> {
    let catalog = state.catalog.now();
    let used: std::collections::BTreeSet<&str> =
        plan_offers(&catalog).flat_map(|o| o.regions.iter().map(String::as_str)).collect();
    let regions = catalog
        .regions
        .iter()
        .filter(|r| used.contains(r.id.as_str()))
        .map(|r| RegionView {
            id: r.id.clone(),
            city: r.city.clone(),
            country: r.country.clone(),
            continent: r.continent.clone(),
        })
        .collect();
    Json(Regions { regions })
}

/// Lists the OS images an available plan boots on this host.
#[utoipa::path(get, path = "/compute/os", operation_id = "listComputeOs", tag = "x402compute",
    responses((status = 200, body = OsList)))]
pub async fn os(State(state): State<AppState>) -> Json<OsList> {
    let catalog = state.catalog.now();
    let sold: std::collections::BTreeSet<&str> = plan_offers(&catalog)
        .filter(|o| o.available)
        .flat_map(|o| o.images.iter().map(String::as_str))
        .collect();
    let os_options = catalog
        .images
        .iter()
        .filter(|i| sold.contains(i.id.as_str()))
        .filter_map(|i| {
            Some(OsView {
                id: i.os_id?,
                name: i.name.clone(),
                arch: i.arch.clone(),
                family: i.family.clone(),
            })
        })
        .collect();
    Json(OsList { os_options })
}

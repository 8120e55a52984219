//! `Offer`: something for sale, with the rules that turn a buyer's parameters into a price.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, FieldErrorCode};
use crate::ids::OfferId;
use crate::money::Usdc;

/// Minutes in the 30-day month that monthly prices are quoted for (720 hours).
pub const MINUTES_PER_MONTH: u64 = 720 * 60;

/// What kind of thing an offer sells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OfferKind {
    /// A box that runs commands for a short window, usually with an action budget.
    Sandbox,
    /// A box reached over SSH, for hours to months.
    Machine,
    /// A TTL lock with a fencing token.
    Lock,
    /// A paid call that returns information (a paid catalog).
    Discovery,
}

/// Compute resources of the box behind an offer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Virtual CPUs.
    #[serde(default)]
    pub vcpu: u32,
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mb: u32,
    /// Writable disk in GiB.
    #[serde(default)]
    pub disk_gb: u32,
    /// Monthly network transfer in GiB, where the offer states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_gb: Option<u32>,
    /// Accelerator, where the offer has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Gpu>,
}

/// A GPU attached to a box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// Marketing name (`NVIDIA H100`).
    pub model: String,
    /// How many.
    #[serde(default = "one")]
    pub count: u32,
    /// Memory per GPU in GiB.
    pub vram_gb: u32,
}

fn one() -> u32 {
    1
}

/// How long a purchase lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum DurationRule {
    /// Not time-bound (a paid call), or bound by a request field other than minutes (a lock's TTL).
    None,
    /// Exactly this many minutes.
    Fixed {
        /// Length of the window.
        minutes: u32,
    },
    /// The buyer picks minutes in `[min_minutes, max_minutes]`, a multiple of `step_minutes`.
    Range {
        /// Fewest minutes.
        min_minutes: u32,
        /// Most minutes.
        max_minutes: u32,
        /// Granularity (60 for offers sold by the hour).
        #[serde(default = "one")]
        step_minutes: u32,
    },
}

/// How many commands (actions) a purchase includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionRule {
    /// No action budget.
    Unlimited,
    /// Exactly this many actions.
    Fixed {
        /// The budget.
        actions: u32,
    },
    /// The buyer picks actions in `[min, max]`.
    Range {
        /// Fewest actions.
        min: u32,
        /// Most actions.
        max: u32,
    },
}

/// The price of a purchase: `base + per_minute × minutes + per_action × actions +
/// per_month × minutes / 43200` (rounded up to an atomic unit). Unset parts are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceRule {
    /// Paid once per purchase.
    #[serde(default)]
    pub base: Usdc,
    /// Paid for each minute bought.
    #[serde(default)]
    pub per_minute: Usdc,
    /// Paid for each action bought.
    #[serde(default)]
    pub per_action: Usdc,
    /// A monthly (720 h) price, prorated to the minutes bought.
    #[serde(default)]
    pub per_month: Usdc,
}

impl PriceRule {
    /// The price of `minutes` and `actions` under this rule.
    pub fn price(&self, minutes: u32, actions: u32) -> Result<Usdc, CoreError> {
        let minute_part = self.per_minute.checked_mul(u64::from(minutes));
        let action_part = self.per_action.checked_mul(u64::from(actions));
        let month_part = self.per_month.mul_div_ceil(u64::from(minutes), MINUTES_PER_MONTH);
        [minute_part, action_part, month_part]
            .into_iter()
            .try_fold(self.base, |sum, part| sum.checked_add(part?))
            .ok_or(CoreError::PriceOverflow)
    }
}

/// Something for sale. The catalog is a list of these, read from `vendbox.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// Stable id (`h3retik-micro`).
    pub id: OfferId,
    /// What is sold.
    pub kind: OfferKind,
    /// Which API surface sells it first (`native`, `h3retik`, `vpsagent`, `storefront`,
    /// `x402compute`, `secretvm`); every offer is also sold through the native API.
    #[serde(default = "native")]
    pub surface: String,
    /// One line for people.
    pub title: String,
    /// What it is good for.
    #[serde(default)]
    pub description: String,
    /// Compute behind it (zero for locks and paid calls).
    #[serde(default)]
    pub resources: Resources,
    /// How long it lasts.
    pub duration: DurationRule,
    /// Its command budget.
    #[serde(default = "unlimited")]
    pub actions: ActionRule,
    /// Regions the buyer may ask for; empty when the offer has no region.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Region used when the buyer names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
    /// Root filesystem images the buyer may ask for; empty when the offer has no image choice.
    #[serde(default)]
    pub images: Vec<String>,
    /// Image used when the buyer names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_image: Option<String>,
    /// How the price is computed.
    pub price: PriceRule,
    /// Whether it can be bought now; an unavailable offer is listed but refuses quotes.
    #[serde(default = "yes")]
    pub available: bool,
    /// Why it cannot be bought, when this host found at start-up that it cannot make it (an
    /// image it does not have); listed with the offer. Not part of the configuration.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
    /// Surface-specific names and facts (a VpsAgent `sku`, a plan `type`), kept as text.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether its box may reach the internet (under the operator's egress policy); absent:
    /// sandboxes and machines do, other kinds have no box. See [`Offer::includes_egress`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

fn native() -> String {
    "native".to_owned()
}

fn unlimited() -> ActionRule {
    ActionRule::Unlimited
}

fn yes() -> bool {
    true
}

/// What a buyer asks of an offer; absent fields take the offer's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuoteParams {
    /// Minutes to buy.
    pub minutes: Option<u32>,
    /// Actions to buy.
    pub actions: Option<u32>,
    /// Region to run in.
    pub region: Option<String>,
    /// Image to boot.
    pub image: Option<String>,
}

/// An offer's answer to [`QuoteParams`]: the resolved parameters and their price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteTerms {
    /// Minutes bought, if the offer is time-bound.
    pub minutes: Option<u32>,
    /// Actions bought, if the offer has a budget.
    pub actions: Option<u32>,
    /// Region, if the offer has regions.
    pub region: Option<String>,
    /// Image, if the offer has images.
    pub image: Option<String>,
    /// What it costs.
    pub price: Usdc,
}

impl Offer {
    /// Whether a box sold by this offer gets network egress: as the offer says, else yes for
    /// sandboxes and machines.
    pub fn includes_egress(&self) -> bool {
        self.egress.unwrap_or(matches!(self.kind, OfferKind::Sandbox | OfferKind::Machine))
    }

    /// Resolves `params` against this offer's rules and prices them.
    pub fn quote(&self, params: &QuoteParams) -> Result<QuoteTerms, CoreError> {
        if !self.available {
            return Err(CoreError::OfferUnavailable(self.id.to_string()));
        }
        let minutes = self.resolve_minutes(params.minutes)?;
        let actions = self.resolve_actions(params.actions)?;
        let region = pick(
            "region",
            &self.id,
            params.region.as_deref(),
            &self.regions,
            self.default_region.as_deref(),
        )?;
        let image =
            pick("image", &self.id, params.image.as_deref(), &self.images, self.default_image.as_deref())?;
        let price = self.price.price(minutes.unwrap_or(0), actions.unwrap_or(0))?;
        Ok(QuoteTerms { minutes, actions, region, image, price })
    }

    fn resolve_minutes(&self, asked: Option<u32>) -> Result<Option<u32>, CoreError> {
        match (self.duration, asked) {
            (DurationRule::None, None) => Ok(None),
            (DurationRule::None, Some(_)) => Err(CoreError::field(
                "minutes",
                FieldErrorCode::NotAdjustable,
                format!("offer `{}` is not sold by time; leave `minutes` out", self.id),
            )),
            (DurationRule::Fixed { minutes }, None) => Ok(Some(minutes)),
            (DurationRule::Fixed { minutes }, Some(m)) if m == minutes => Ok(Some(m)),
            (DurationRule::Fixed { minutes }, Some(_)) => Err(CoreError::field(
                "minutes",
                FieldErrorCode::NotAdjustable,
                format!("offer `{}` lasts exactly {minutes} minutes; leave `minutes` out", self.id),
            )),
            (DurationRule::Range { .. }, None) => Err(CoreError::field(
                "minutes",
                FieldErrorCode::MissingField,
                format!("offer `{}` needs `minutes`", self.id),
            )),
            (DurationRule::Range { min_minutes, max_minutes, step_minutes }, Some(m)) => {
                let step = step_minutes.max(1);
                if m < min_minutes || m > max_minutes || m % step != 0 {
                    let step_text = if step > 1 { format!(" in steps of {step}") } else { String::new() };
                    return Err(CoreError::field(
                        "minutes",
                        FieldErrorCode::OutOfRange,
                        format!(
                            "`minutes` must be between {min_minutes} and {max_minutes}{step_text} for offer `{}`; got {m}",
                            self.id
                        ),
                    ));
                }
                Ok(Some(m))
            }
        }
    }

    fn resolve_actions(&self, asked: Option<u32>) -> Result<Option<u32>, CoreError> {
        match (self.actions, asked) {
            (ActionRule::Unlimited, None) => Ok(None),
            (ActionRule::Unlimited, Some(_)) => Err(CoreError::field(
                "actions",
                FieldErrorCode::NotAdjustable,
                format!("offer `{}` has no action budget; leave `actions` out", self.id),
            )),
            (ActionRule::Fixed { actions }, None) => Ok(Some(actions)),
            (ActionRule::Fixed { actions }, Some(a)) if a == actions => Ok(Some(a)),
            (ActionRule::Fixed { actions }, Some(_)) => Err(CoreError::field(
                "actions",
                FieldErrorCode::NotAdjustable,
                format!("offer `{}` includes exactly {actions} actions; leave `actions` out", self.id),
            )),
            (ActionRule::Range { .. }, None) => Err(CoreError::field(
                "actions",
                FieldErrorCode::MissingField,
                format!("offer `{}` needs `actions`", self.id),
            )),
            (ActionRule::Range { min, max }, Some(a)) if a < min || a > max => Err(CoreError::field(
                "actions",
                FieldErrorCode::OutOfRange,
                format!("`actions` must be between {min} and {max} for offer `{}`; got {a}", self.id),
            )),
            (ActionRule::Range { .. }, Some(a)) => Ok(Some(a)),
        }
    }

    /// Checks the offer's own consistency (bounds in order, defaults among the choices).
    /// Returns the key that is wrong and why.
    pub fn check(&self) -> Result<(), (String, String)> {
        if let DurationRule::Range { min_minutes, max_minutes, step_minutes } = self.duration {
            if min_minutes == 0 || min_minutes > max_minutes {
                return Err((
                    "duration".into(),
                    format!(
                        "min_minutes ({min_minutes}) must be at least 1 and at most max_minutes ({max_minutes})"
                    ),
                ));
            }
            if step_minutes == 0 || min_minutes % step_minutes != 0 {
                return Err((
                    "duration.step_minutes".into(),
                    "must be at least 1 and divide min_minutes".into(),
                ));
            }
        }
        if let DurationRule::Fixed { minutes: 0 } = self.duration {
            return Err(("duration.minutes".into(), "must be at least 1".into()));
        }
        if let ActionRule::Range { min, max } = self.actions
            && (min == 0 || min > max)
        {
            return Err((
                "actions".into(),
                format!("min ({min}) must be at least 1 and at most max ({max})"),
            ));
        }
        for (key, choices, default) in [
            ("default_region", &self.regions, &self.default_region),
            ("default_image", &self.images, &self.default_image),
        ] {
            if let Some(d) = default
                && !choices.contains(d)
            {
                return Err((key.into(), format!("`{d}` is not in the offer's list")));
            }
        }
        // A price that overflows at the offer's largest purchase is a configuration error.
        let max_minutes = match self.duration {
            DurationRule::None => 0,
            DurationRule::Fixed { minutes } => minutes,
            DurationRule::Range { max_minutes, .. } => max_minutes,
        };
        let max_actions = match self.actions {
            ActionRule::Unlimited => 0,
            ActionRule::Fixed { actions } => actions,
            ActionRule::Range { max, .. } => max,
        };
        self.price.price(max_minutes, max_actions).map(|_| ()).map_err(|e| ("price".into(), e.to_string()))
    }
}

fn pick(
    field: &str,
    offer: &OfferId,
    asked: Option<&str>,
    choices: &[String],
    default: Option<&str>,
) -> Result<Option<String>, CoreError> {
    match asked {
        None => Ok(default.map(str::to_owned).or_else(|| choices.first().cloned())),
        Some(_) if choices.is_empty() => Err(CoreError::field(
            field,
            FieldErrorCode::NotAdjustable,
            format!("offer `{offer}` has no {field} choice; leave `{field}` out"),
        )),
        Some(a) if choices.iter().any(|c| c == a) => Ok(Some(a.to_owned())),
        Some(a) => Err(CoreError::field(
            field,
            FieldErrorCode::UnsupportedValue,
            format!("offer `{offer}` has no {field} `{a}`; choose one of: {}", choices.join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom_session() -> Offer {
        toml::from_str(
            r#"
            id = "h3retik-custom"
            kind = "sandbox"
            title = "Custom"
            duration = { rule = "range", min_minutes = 1, max_minutes = 360 }
            actions = { rule = "range", min = 1, max = 300 }
            regions = ["auto", "us", "europe", "asia"]
            default_region = "auto"
            price = { per_minute = "0.04", per_action = "0.01" }
            "#,
        )
        .unwrap()
    }

    fn fixed_session() -> Offer {
        toml::from_str(
            r#"
            id = "h3retik-micro"
            kind = "sandbox"
            title = "Micro"
            duration = { rule = "fixed", minutes = 5 }
            actions = { rule = "fixed", actions = 3 }
            price = { base = "0.19" }
            "#,
        )
        .unwrap()
    }

    fn params(minutes: Option<u32>, actions: Option<u32>, region: Option<&str>) -> QuoteParams {
        QuoteParams { minutes, actions, region: region.map(str::to_owned), image: None }
    }

    #[test]
    fn prices_a_custom_session_linearly() {
        let terms = custom_session().quote(&params(Some(20), Some(12), Some("europe"))).unwrap();
        assert_eq!(terms.price, "0.92".parse().unwrap());
        assert_eq!(terms.minutes, Some(20));
        assert_eq!(terms.actions, Some(12));
        assert_eq!(terms.region.as_deref(), Some("europe"));
        let default_region = custom_session().quote(&params(Some(1), Some(1), None)).unwrap();
        assert_eq!(default_region.region.as_deref(), Some("auto"));
    }

    #[test]
    fn a_fixed_package_has_its_own_terms() {
        let terms = fixed_session().quote(&QuoteParams::default()).unwrap();
        assert_eq!((terms.minutes, terms.actions, terms.price), (Some(5), Some(3), Usdc(190_000)));
        assert!(fixed_session().quote(&params(Some(5), Some(3), None)).is_ok());
    }

    #[test]
    fn refuses_out_of_range_and_foreign_values_naming_the_field() {
        let offer = custom_session();
        let cases = [
            (params(Some(0), Some(1), None), "minutes", "out_of_range"),
            (params(Some(361), Some(1), None), "minutes", "out_of_range"),
            (params(Some(10), Some(301), None), "actions", "out_of_range"),
            (params(None, Some(1), None), "minutes", "missing_field"),
            (params(Some(10), None, None), "actions", "missing_field"),
            (params(Some(10), Some(1), Some("mars")), "region", "unsupported_value"),
        ];
        for (p, field, code) in cases {
            let err = offer.quote(&p).unwrap_err();
            let CoreError::Field(f) = &err else { panic!("{err:?}") };
            assert_eq!((f.field.as_str(), err.code()), (field, code), "{p:?}");
        }
        let err = fixed_session().quote(&params(Some(6), None, None)).unwrap_err();
        assert_eq!(err.code(), "not_adjustable");
        let err = fixed_session().quote(&params(None, None, Some("us"))).unwrap_err();
        assert_eq!(err.code(), "not_adjustable");
    }

    #[test]
    fn unavailable_offers_refuse_quotes() {
        let mut offer = fixed_session();
        offer.available = false;
        assert_eq!(offer.quote(&QuoteParams::default()).unwrap_err().code(), "offer_unavailable");
    }

    #[test]
    fn monthly_prices_prorate_and_hourly_steps_are_enforced() {
        let offer: Offer = toml::from_str(
            r#"
            id = "plan"
            kind = "machine"
            title = "GPU"
            duration = { rule = "range", min_minutes = 60, max_minutes = 525600, step_minutes = 60 }
            price = { per_month = "90" }
            "#,
        )
        .unwrap();
        let month = offer.quote(&params(Some(720 * 60), None, None)).unwrap();
        assert_eq!(month.price, Usdc::whole(90));
        let hour = offer.quote(&params(Some(60), None, None)).unwrap();
        assert_eq!(hour.price, Usdc(125_000));
        assert_eq!(offer.quote(&params(Some(90), None, None)).unwrap_err().code(), "out_of_range");
    }

    #[test]
    fn base_plus_per_minute() {
        let rule = PriceRule {
            base: "0.25".parse().unwrap(),
            per_minute: "0.01".parse().unwrap(),
            ..PriceRule::default()
        };
        assert_eq!(rule.price(90, 0).unwrap(), "1.15".parse().unwrap());
        let huge = PriceRule { per_minute: Usdc(u64::MAX), ..PriceRule::default() };
        assert_eq!(huge.price(2, 0), Err(CoreError::PriceOverflow));
    }

    #[test]
    fn check_finds_inconsistent_offers() {
        let mut offer = custom_session();
        assert!(offer.check().is_ok());
        offer.default_region = Some("mars".into());
        assert_eq!(offer.check().unwrap_err().0, "default_region");
        let mut offer = custom_session();
        offer.duration = DurationRule::Range { min_minutes: 10, max_minutes: 5, step_minutes: 1 };
        assert_eq!(offer.check().unwrap_err().0, "duration");
    }
}

//! `Usdc`: money as an integer count of USDC atomic units (6 decimals). Never a float.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of decimal places of USDC.
pub const USDC_DECIMALS: u32 = 6;
const ATOMIC_PER_USDC: u64 = 1_000_000;

/// An amount of USDC in atomic units: `Usdc(1_000_000)` is one USDC.
///
/// Serialized as a decimal string (`"0.19"`), parsed from a decimal string with at most six
/// fractional digits. Arithmetic is checked: an overflow is an error, never a wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Usdc(pub u64);

/// Why a string is not an amount of USDC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseUsdcError {
    /// The amount is empty.
    #[error("amount is empty")]
    Empty,
    /// The amount has a character that is not a digit or a single decimal point.
    #[error("amount `{0}` is not a decimal number such as \"0.19\"")]
    NotDecimal(String),
    /// More than six digits after the decimal point.
    #[error("amount `{0}` has more than 6 decimal places (USDC's precision)")]
    TooPrecise(String),
    /// The amount does not fit in 64 bits of atomic units.
    #[error("amount `{0}` is too large")]
    TooLarge(String),
}

impl Usdc {
    /// Zero USDC.
    pub const ZERO: Usdc = Usdc(0);

    /// The amount in atomic units.
    pub const fn atomic(self) -> u64 {
        self.0
    }

    /// `whole` USDC, for constants and tests.
    pub const fn whole(whole: u64) -> Usdc {
        Usdc(whole * ATOMIC_PER_USDC)
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Usdc) -> Option<Usdc> {
        self.0.checked_add(other.0).map(Usdc)
    }

    /// `self * n`, or `None` on overflow.
    pub fn checked_mul(self, n: u64) -> Option<Usdc> {
        self.0.checked_mul(n).map(Usdc)
    }

    /// `self * numerator / denominator`, rounded up to the next atomic unit, or `None` on overflow
    /// or a zero denominator. Used for prorated prices (a monthly price for some minutes).
    pub fn mul_div_ceil(self, numerator: u64, denominator: u64) -> Option<Usdc> {
        if denominator == 0 {
            return None;
        }
        let product = u128::from(self.0) * u128::from(numerator);
        let quotient = product.div_ceil(u128::from(denominator));
        u64::try_from(quotient).ok().map(Usdc)
    }

    /// The amount as a decimal string with the trailing zeros of the fraction removed, but at
    /// least two decimals (`"0.19"`, `"0.0001"`, `"90.00"`).
    pub fn to_decimal_string(self) -> String {
        let whole = self.0 / ATOMIC_PER_USDC;
        let frac = self.0 % ATOMIC_PER_USDC;
        let mut frac = format!("{frac:06}");
        while frac.len() > 2 && frac.ends_with('0') {
            frac.pop();
        }
        format!("{whole}.{frac}")
    }
}

impl fmt::Display for Usdc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} USDC", self.to_decimal_string())
    }
}

impl FromStr for Usdc {
    type Err = ParseUsdcError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ParseUsdcError::Empty);
        }
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && frac.is_empty() || !digits(whole) || !digits(frac) {
            return Err(ParseUsdcError::NotDecimal(s.to_owned()));
        }
        if frac.len() > USDC_DECIMALS as usize {
            return Err(ParseUsdcError::TooPrecise(s.to_owned()));
        }
        let too_large = || ParseUsdcError::TooLarge(s.to_owned());
        let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_large())? };
        let frac_atomic: u64 = format!("{frac:0<6}").parse().map_err(|_| too_large())?;
        whole
            .checked_mul(ATOMIC_PER_USDC)
            .and_then(|w| w.checked_add(frac_atomic))
            .map(Usdc)
            .ok_or_else(too_large)
    }
}

impl Serialize for Usdc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_decimal_string())
    }
}

impl<'de> Deserialize<'de> for Usdc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Usdc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^\d+(\.\d{1,6})?$"))
            .description(Some("Amount of USDC as a decimal string (6 decimals at most)."))
            .examples(["0.19"])
            .into()
    }
}

impl utoipa::ToSchema for Usdc {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_strings() {
        assert_eq!("0.19".parse::<Usdc>(), Ok(Usdc(190_000)));
        assert_eq!("0.0001".parse::<Usdc>(), Ok(Usdc(100)));
        assert_eq!("90".parse::<Usdc>(), Ok(Usdc(90_000_000)));
        assert_eq!(".5".parse::<Usdc>(), Ok(Usdc(500_000)));
        assert_eq!("359.99".parse::<Usdc>(), Ok(Usdc(359_990_000)));
        assert_eq!("0.000001".parse::<Usdc>(), Ok(Usdc(1)));
    }

    #[test]
    fn rejects_what_is_not_an_amount() {
        assert_eq!("".parse::<Usdc>(), Err(ParseUsdcError::Empty));
        assert!(matches!("1e3".parse::<Usdc>(), Err(ParseUsdcError::NotDecimal(_))));
        assert!(matches!("-1".parse::<Usdc>(), Err(ParseUsdcError::NotDecimal(_))));
        assert!(matches!("1.2.3".parse::<Usdc>(), Err(ParseUsdcError::NotDecimal(_))));
        assert!(matches!(".".parse::<Usdc>(), Err(ParseUsdcError::NotDecimal(_))));
        assert!(matches!("0.0000001".parse::<Usdc>(), Err(ParseUsdcError::TooPrecise(_))));
        assert!(matches!("99999999999999999999".parse::<Usdc>(), Err(ParseUsdcError::TooLarge(_))));
    }

    #[test]
    fn formats_with_at_least_two_decimals() {
        assert_eq!(Usdc(190_000).to_decimal_string(), "0.19");
        assert_eq!(Usdc(100).to_decimal_string(), "0.0001");
        assert_eq!(Usdc::whole(90).to_decimal_string(), "90.00");
        assert_eq!(Usdc(1).to_decimal_string(), "0.000001");
        assert_eq!(Usdc(8_100_000).to_string(), "8.10 USDC");
    }

    #[test]
    fn round_trips_through_text() {
        for atomic in [0, 1, 99, 100, 190_000, 1_000_000, 123_456_789, u64::MAX] {
            let text = Usdc(atomic).to_decimal_string();
            assert_eq!(text.parse::<Usdc>(), Ok(Usdc(atomic)), "{text}");
        }
    }

    #[test]
    fn prorates_rounding_up() {
        // 90 USDC a month (720 h) for 720 h is 90 USDC; for one minute it rounds up.
        assert_eq!(Usdc::whole(90).mul_div_ceil(720 * 60, 720 * 60), Some(Usdc::whole(90)));
        assert_eq!(Usdc::whole(90).mul_div_ceil(1, 720 * 60), Some(Usdc(2084)));
        assert_eq!(Usdc(1).mul_div_ceil(1, 0), None);
        assert_eq!(Usdc(u64::MAX).mul_div_ceil(2, 1), None);
    }
}

//! Fault injection for crash and failure tests: `VENDBOX_FAULTS=pause-before-settle=5,fail-work`.
//! Empty in production; every fault is logged loudly at start-up when set.

use std::time::Duration;

/// Faults to inject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Sleep this long after the work is done and before the settlement is sent.
    pub pause_before_settle: Option<Duration>,
    /// Sleep this long after the settlement is confirmed and before it is recorded.
    pub pause_after_settle: Option<Duration>,
    /// Paid work fails after the payment is verified and reserved.
    pub fail_work: bool,
}

impl Faults {
    /// Reads `VENDBOX_FAULTS`.
    pub fn from_env() -> Faults {
        std::env::var("VENDBOX_FAULTS").map(|v| Faults::parse(&v)).unwrap_or_default()
    }

    /// Reads a comma-separated list; unknown entries are logged and ignored.
    pub fn parse(text: &str) -> Faults {
        let mut faults = Faults::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            let secs = || value.parse::<f64>().ok().map(Duration::from_secs_f64);
            match name {
                "pause-before-settle" => faults.pause_before_settle = secs(),
                "pause-after-settle" => faults.pause_after_settle = secs(),
                "fail-work" => faults.fail_work = true,
                _ => tracing::warn!(fault = entry, "unknown fault ignored"),
            }
        }
        if faults != Faults::default() {
            tracing::warn!(?faults, "FAULT INJECTION IS ON: this vendbox misbehaves on purpose");
        }
        faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_list() {
        let f = Faults::parse("pause-before-settle=2.5, fail-work,bogus");
        assert_eq!(f.pause_before_settle, Some(Duration::from_millis(2500)));
        assert!(f.fail_work);
        assert_eq!(f.pause_after_settle, None);
        assert_eq!(Faults::parse(""), Faults::default());
    }
}

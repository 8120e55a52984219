//! Sample statistics shared by the benchmarks: warm-up rounds that are run and thrown away, a
//! baseline and a subject measured in alternation (ABBA) so that drift on the machine weighs on
//! both alike, and percentiles printed only when enough samples hold them.
//!
//! A p99 needs at least [`P99_MIN_SAMPLES`] samples and a p90 at least [`P90_MIN_SAMPLES`]:
//! from fewer, the "percentile" is the maximum or next to it, one outlier. With fewer samples
//! the column says so instead of printing a number.
//!
//! A figure that cannot be measured (no samples, a baseline of zero) panics with what is
//! missing: a benchmark that stops is better than one that prints a number it did not measure.

#![allow(dead_code, reason = "each benchmark includes this file and uses the part it needs")]

use std::future::Future;
use std::time::{Duration, Instant};

/// The fewest samples a p99 is read from.
pub(crate) const P99_MIN_SAMPLES: usize = 100;

/// The fewest samples a p90 is read from.
pub(crate) const P90_MIN_SAMPLES: usize = 10;

/// How many rounds an alternated measurement runs; the first `warm_up` are run and thrown away.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rounds {
    /// Rounds run before measuring (caches, connection pools, lazily built state), discarded.
    pub(crate) warm_up: usize,
    /// Rounds kept; each gives one baseline and one subject sample.
    pub(crate) measured: usize,
}

/// The two sides of an alternated measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Baseline,
    Subject,
}

/// ABBA order: even rounds run the baseline first, odd rounds the subject first, so that neither
/// side is always the one that runs on a cold machine or right after the other. Each step says
/// whether it is measured (past the warm-up).
fn schedule(rounds: Rounds) -> impl Iterator<Item = (Side, bool)> {
    assert!(rounds.measured > 0, "a measurement of zero rounds has no samples to report");
    (0..rounds.warm_up + rounds.measured).flat_map(move |round| {
        let measured = round >= rounds.warm_up;
        let order =
            if round % 2 == 0 { [Side::Baseline, Side::Subject] } else { [Side::Subject, Side::Baseline] };
        order.map(|side| (side, measured))
    })
}

/// What an alternated measurement kept from each side, in the order measured.
#[derive(Debug)]
pub(crate) struct Pair<T> {
    /// One sample per measured round of the baseline.
    pub(crate) baseline: Vec<T>,
    /// One sample per measured round of the subject.
    pub(crate) subject: Vec<T>,
}

/// Runs `baseline` and `subject` in ABBA order for `rounds`, warm-up first, and keeps what each
/// returns after the warm-up.
pub(crate) fn alternate<T>(
    rounds: Rounds,
    mut baseline: impl FnMut() -> T,
    mut subject: impl FnMut() -> T,
) -> Pair<T> {
    let mut pair = Pair { baseline: Vec::new(), subject: Vec::new() };
    for (side, measured) in schedule(rounds) {
        let (sample, kept) = match side {
            Side::Baseline => (baseline(), &mut pair.baseline),
            Side::Subject => (subject(), &mut pair.subject),
        };
        if measured {
            kept.push(sample);
        }
    }
    pair
}

/// [`alternate`] for measurements that are futures: each is awaited before the next starts.
pub(crate) async fn alternate_async<T, B, S>(
    rounds: Rounds,
    mut baseline: impl FnMut() -> B,
    mut subject: impl FnMut() -> S,
) -> Pair<T>
where
    B: Future<Output = T>,
    S: Future<Output = T>,
{
    let mut pair = Pair { baseline: Vec::new(), subject: Vec::new() };
    for (side, measured) in schedule(rounds) {
        let (sample, kept) = match side {
            Side::Baseline => (baseline().await, &mut pair.baseline),
            Side::Subject => (subject().await, &mut pair.subject),
        };
        if measured {
            kept.push(sample);
        }
    }
    pair
}

/// How long `work` takes.
pub(crate) async fn timed(work: impl Future<Output = ()>) -> Duration {
    let started = Instant::now();
    work.await;
    started.elapsed()
}

/// The sorted durations of one measurement.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    sorted: Vec<Duration>,
}

impl Summary {
    /// The summary of `times`, the samples of `what`; panics when there are none.
    pub(crate) fn of(what: &str, mut times: Vec<Duration>) -> Summary {
        assert!(!times.is_empty(), "cannot measure {what}: no samples were taken");
        times.sort_unstable();
        Summary { sorted: times }
    }

    /// How many samples it holds.
    pub(crate) fn count(&self) -> usize {
        self.sorted.len()
    }

    /// The sum of all samples.
    pub(crate) fn total(&self) -> Duration {
        self.sorted.iter().sum()
    }

    /// The median (nearest rank).
    pub(crate) fn median(&self) -> Duration {
        self.rank(50)
    }

    /// The 90th percentile, when at least [`P90_MIN_SAMPLES`] samples hold it.
    pub(crate) fn p90(&self) -> Option<Duration> {
        (self.count() >= P90_MIN_SAMPLES).then(|| self.rank(90))
    }

    /// The 99th percentile, when at least [`P99_MIN_SAMPLES`] samples hold it.
    pub(crate) fn p99(&self) -> Option<Duration> {
        (self.count() >= P99_MIN_SAMPLES).then(|| self.rank(99))
    }

    /// The `percent`th percentile by nearest rank: the smallest sample with at least `percent`%
    /// of the samples at or below it.
    fn rank(&self, percent: usize) -> Duration {
        let rank = (self.count() * percent).div_ceil(100).max(1);
        self.sorted[rank - 1]
    }

    /// The median, p90 and p99 in that order (`None` where there are too few samples).
    fn columns(&self) -> [Option<Duration>; 3] {
        [Some(self.median()), self.p90(), self.p99()]
    }
}

/// `subject / baseline`; panics when the baseline is zero or not a number, which would make any
/// ratio meaningless.
pub(crate) fn ratio(subject: f64, baseline: f64, what: &str) -> f64 {
    assert!(
        baseline.is_finite() && baseline > 0.0 && subject.is_finite(),
        "cannot measure {what}: the baseline is {baseline} and the subject {subject}"
    );
    subject / baseline
}

/// `count` events in `elapsed`, per second; panics when either is zero.
pub(crate) fn per_second(count: usize, elapsed: Duration, what: &str) -> f64 {
    assert!(count > 0, "cannot measure {what}: nothing completed");
    assert!(!elapsed.is_zero(), "cannot measure {what}: no time elapsed");
    count as f64 / elapsed.as_secs_f64()
}

/// A duration in the unit that suits it, ten characters wide.
pub(crate) fn duration(d: Duration) -> String {
    let seconds = d.as_secs_f64();
    if seconds < 1e-3 {
        format!("{:>7.1} µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:>7.2} ms", seconds * 1e3)
    } else {
        format!("{seconds:>8.3} s")
    }
}

/// The column printed where a percentile has too few samples.
const NOT_MEASURED: &str = "        --";

/// The header over [`row`]s, with `label_width` the width of their labels.
pub(crate) fn header(label_width: usize) {
    println!("  {:<label_width$} {:>7}  {:>10}  {:>10}  {:>10}", "", "n", "median", "p90", "p99");
}

/// Prints `label`, the sample count and the median, p90 and p99 of `summary` ("--" where there
/// are too few samples for that percentile).
pub(crate) fn row(label: &str, label_width: usize, summary: &Summary) {
    let cells: Vec<String> =
        summary.columns().iter().map(|c| c.map_or_else(|| NOT_MEASURED.to_owned(), duration)).collect();
    println!("  {label:<label_width$} {:>7}  {}", summary.count(), cells.join("  "));
}

/// Prints each percentile of `subject` as a multiple of the same percentile of `baseline`
/// (measured in the same run); panics when a baseline percentile is zero.
pub(crate) fn ratio_row(label: &str, label_width: usize, subject: &Summary, baseline: &Summary) {
    let cells: Vec<String> = subject
        .columns()
        .iter()
        .zip(baseline.columns())
        .zip(["median", "p90", "p99"])
        .map(|((s, b), name)| match (s, b) {
            (Some(s), Some(b)) => {
                let what = format!("the {name} ratio of `{label}`");
                format!("{:>9.2}x", ratio(s.as_secs_f64(), b.as_secs_f64(), &what))
            }
            _ => NOT_MEASURED.to_owned(),
        })
        .collect();
    println!("  {label:<label_width$} {:>7}  {}", "", cells.join("  "));
}

/// Says why a p99 (or p90) column holds "--", when `summary` has too few samples for it.
pub(crate) fn explain_missing(summary: &Summary, why: &str) {
    if summary.p99().is_none() {
        println!(
            "  (p99 not measured from {} samples: it needs {P99_MIN_SAMPLES}{}; {why})",
            summary.count(),
            if summary.p90().is_none() { format!(", and p90 {P90_MIN_SAMPLES}") } else { String::new() }
        );
    }
}

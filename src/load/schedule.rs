//! Open-loop send times: a rate profile (steps and ramps) turned into the
//! intended send time of every request, planned ahead of the sends.
//!
//! Catch-up rule: a request whose intended time has passed is sent as soon
//! as a connection can take it, never skipped, and its latency counts from
//! its intended time (the correction for coordinated omission). After a
//! stall the backlog therefore goes out at once, as the users a fixed
//! rate stands for would have sent it.

use std::time::Duration;

/// One piece of a profile: the rate goes from `from` to `to` (requests per
/// second, linearly; equal for a step) over `length`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment {
    /// Rate at the start of the segment.
    pub from: f64,
    /// Rate at its end.
    pub to: f64,
    /// How long it lasts.
    pub length: Duration,
}

/// Parses a profile: comma-separated `RATE@DURATION` steps and
/// `RATE..RATE@DURATION` ramps, e.g. `1000@10s,1000..5000@5s,5000@10s`.
pub fn parse_profile(text: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        let bad = || {
            format!("invalid profile segment {part:?}: expected RATE@DURATION or RATE..RATE@DURATION, e.g. 1000@10s")
        };
        let (rates, length) = part.split_once('@').ok_or_else(bad)?;
        let length = crate::cli::parse_duration(length).map_err(|_| bad())?;
        let (from, to) = match rates.split_once("..") {
            Some((a, b)) => (parse_rate(a)?, parse_rate(b)?),
            None => (parse_rate(rates)?, parse_rate(rates)?),
        };
        if length.is_zero() {
            return Err(bad());
        }
        out.push(Segment { from, to, length });
    }
    Ok(out)
}

/// A rate in requests per second: a positive finite number.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e9 => Ok(r),
        _ => Err(format!(
            "invalid rate {text:?}: expected requests per second above 0, e.g. 2500 or 0.5"
        )),
    }
}

/// The total length of a profile.
pub fn length(profile: &[Segment]) -> Duration {
    profile.iter().map(|s| s.length).sum()
}

/// Intended send times, in nanoseconds from the start, for one thread
/// carrying `share` of the profile's rate (1/threads): request `k` is due
/// when the integral of the rate reaches `k`, which keeps a ramp's first
/// requests (at a rate near 0) from spacing out the rest.
#[derive(Debug)]
pub struct Schedule {
    profile: Vec<Segment>,
    share: f64,
    /// The segment being served, the time it began and the requests due
    /// before it.
    segment: usize,
    segment_time: f64,
    segment_count: f64,
    /// The index of the next request (fractional: threads are staggered).
    k: f64,
}

impl Schedule {
    /// A schedule whose first request is `offset` (in 0..1) of an
    /// interval in, so that threads do not all send at the same instants.
    pub fn new(profile: Vec<Segment>, share: f64, offset: f64) -> Schedule {
        Schedule {
            profile,
            share,
            segment: 0,
            segment_time: 0.0,
            segment_count: 0.0,
            k: offset.clamp(0.0, 1.0),
        }
    }

    /// The next intended time in nanoseconds, or `None` after the profile.
    pub fn peek(&mut self) -> Option<u64> {
        loop {
            let seg = self.profile.get(self.segment)?;
            let len = seg.length.as_secs_f64();
            // Requests due t seconds into the segment: a*t + b*t^2/2.
            let a = seg.from * self.share;
            let b = (seg.to - seg.from) * self.share / len;
            let total = a * len + b * len * len / 2.0;
            let m = self.k - self.segment_count;
            if m < total {
                let t = if b.abs() < 1e-12 {
                    m / a
                } else {
                    (-a + (a * a + 2.0 * b * m).max(0.0).sqrt()) / b
                };
                return Some(((self.segment_time + t.min(len)) * 1e9) as u64);
            }
            self.segment += 1;
            self.segment_time += len;
            self.segment_count += total;
        }
    }

    /// Moves past the time `peek` returned.
    pub fn advance(&mut self) {
        self.k += 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut s: Schedule) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(t) = s.peek() {
            out.push(t);
            s.advance();
        }
        out
    }

    #[test]
    fn profiles_parse() {
        let p = parse_profile("1000@10s, 10..20@500ms,0.5@2s").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!((p[1].from, p[1].to), (10.0, 20.0));
        assert_eq!(p[1].length, Duration::from_millis(500));
        assert_eq!(length(&p), Duration::from_millis(12_500));
        for bad in [
            "", "1000", "@1s", "0@1s", "-5@1s", "x@1s", "10@", "10@0s", "10..@1s", "nan@1s",
        ] {
            assert!(parse_profile(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_step_is_evenly_spaced_and_ends_on_time() {
        let p = parse_profile("100@1s").unwrap();
        let times = all(Schedule::new(p, 1.0, 0.0));
        assert_eq!(times.len(), 100);
        assert_eq!(times[1] - times[0], 10_000_000);
        assert!(*times.last().unwrap() < 1_000_000_000);
    }

    #[test]
    fn shares_add_up_across_threads() {
        let p = parse_profile("1000@1s,3000@1s").unwrap();
        let a = all(Schedule::new(p.clone(), 0.5, 0.0)).len();
        let b = all(Schedule::new(p, 0.5, 0.5)).len();
        assert_eq!(a + b, 4000);
    }

    #[test]
    fn a_ramp_sends_its_average_rate() {
        let p = parse_profile("0.001..2000@2s").unwrap();
        let n = all(Schedule::new(p, 1.0, 0.0)).len() as f64;
        // The integral of a linear ramp from ~0 to 2000/s over 2 s.
        assert!((n - 2000.0).abs() < 2.0, "{n}");
    }
}

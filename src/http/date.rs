//! The `Date` header value, formatted once a second per core.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// IMF-fixdate is always 29 bytes: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const DATE_LEN: usize = 29;

/// A per-core cache of the formatted date. The loop calls `update` once per
/// turn; formatting happens only when the second changes.
#[derive(Clone, Debug)]
pub struct DateCache {
    secs: u64,
    bytes: [u8; DATE_LEN],
}

impl DateCache {
    /// A cache holding the date for `now`.
    pub fn new(now: SystemTime) -> DateCache {
        let mut cache = DateCache {
            secs: u64::MAX,
            bytes: [b' '; DATE_LEN],
        };
        cache.update(now);
        cache
    }

    /// Refreshes the text if `now` is in a different second.
    pub fn update(&mut self, now: SystemTime) {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs == self.secs {
            return;
        }
        self.secs = secs;
        let date = httpdate::HttpDate::from(UNIX_EPOCH + std::time::Duration::from_secs(secs));
        let mut out = &mut self.bytes[..];
        // NOTE(unwrap-free): HttpDate's Display always writes 29 bytes; if it
        // ever wrote more, the write fails and the old text stays.
        let _ = write!(out, "{date}");
    }

    /// The second it holds, since the Unix epoch.
    pub fn unix_secs(&self) -> u64 {
        self.secs
    }

    /// The formatted date, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    pub fn as_bytes(&self) -> &[u8; DATE_LEN] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_imf_fixdate_and_refreshes_per_second() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let mut cache = DateCache::new(t);
        assert_eq!(cache.as_bytes(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        cache.update(t + Duration::from_millis(999));
        assert_eq!(cache.as_bytes(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        cache.update(t + Duration::from_secs(1));
        assert_eq!(cache.as_bytes(), b"Sun, 06 Nov 1994 08:49:38 GMT");
    }
}

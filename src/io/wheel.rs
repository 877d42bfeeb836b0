//! A hashed timer wheel for per-connection deadlines: O(1) to arm, nothing
//! to disarm, and each expiry touches one slot.
//!
//! Entries are checked lazily: an expired entry only means "ask this
//! connection what is due" (`Conn::handle_timeout` ignores early calls),
//! so a deadline that moved later needs no removal. The backend arms a
//! connection again only when its deadline moves *earlier* than what is
//! armed, which keeps the wheel to about one entry per connection.

use std::time::{Duration, Instant};

/// Slot width. Deadlines are seconds long; 4 ms keeps them within a tick
/// of exact without waking the loop more than 250 times a second.
pub const TICK: Duration = Duration::from_millis(4);
/// Slots in one turn of the wheel (4 ms x 1024 = 4.1 s). Longer deadlines
/// wait a few turns in their slot.
const SLOTS: usize = 1024;

/// Timer entries of one core, keyed by (slab key, generation).
#[derive(Debug)]
pub struct Wheel {
    slots: Vec<Vec<Timer>>,
    origin: Instant,
    /// The next tick to expire.
    cursor: u64,
    len: usize,
}

/// One armed deadline: 16 bytes, about one per open connection.
#[derive(Clone, Copy, Debug)]
struct Timer {
    key: u32,
    gen: u32,
    tick: u64,
}

impl Wheel {
    /// An empty wheel whose tick 0 is `origin`.
    pub fn new(origin: Instant) -> Wheel {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            origin,
            cursor: 0,
            len: 0,
        }
    }

    /// The tick a deadline falls in, rounded up so nothing fires early.
    pub fn tick_of(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        let tick = TICK.as_nanos();
        u64::try_from(nanos.div_ceil(tick)).unwrap_or(u64::MAX)
    }

    /// Arms `(key, gen)` for `at`; returns the tick it landed in.
    pub fn insert(&mut self, at: Instant, key: usize, gen: u32) -> u64 {
        let tick = self.tick_of(at).max(self.cursor);
        // Slab keys stay below 2^32 (io_uring's user_data holds 32 bits);
        // a key that did not would find no slot when it fires, harmlessly.
        let key = u32::try_from(key).unwrap_or(u32::MAX);
        self.slots[(tick % SLOTS as u64) as usize].push(Timer { key, gen, tick });
        self.len += 1;
        tick
    }

    /// Moves every entry due at `now` into `due`.
    pub fn expire(&mut self, now: Instant, due: &mut Vec<(usize, u32)>) {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        let until = u64::try_from(nanos / TICK.as_nanos()).unwrap_or(u64::MAX);
        if until < self.cursor {
            return;
        }
        if self.len > 0 {
            let visits = (until - self.cursor + 1).min(SLOTS as u64);
            for i in 0..visits {
                let slot = &mut self.slots[((self.cursor + i) % SLOTS as u64) as usize];
                let before = slot.len();
                slot.retain(|t| {
                    let fire = t.tick <= until;
                    if fire {
                        due.push((t.key as usize, t.gen));
                    }
                    !fire
                });
                self.len -= before - slot.len();
            }
        }
        self.cursor = until + 1;
    }

    /// How long the loop may sleep before the next slot with entries is
    /// due; `None` when the wheel is empty.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let ahead = (0..SLOTS as u64)
            .find(|i| !self.slots[((self.cursor + i) % SLOTS as u64) as usize].is_empty())
            .unwrap_or(SLOTS as u64);
        let at = self.origin + TICK * u32::try_from(self.cursor + ahead).unwrap_or(u32::MAX);
        Some(at.saturating_duration_since(now))
    }

    /// Entries armed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_or_after_the_deadline_never_before() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        w.insert(t0 + Duration::from_millis(10), 1, 0);
        w.insert(t0 + Duration::from_secs(20), 2, 0);
        let mut due = Vec::new();
        w.expire(t0 + Duration::from_millis(9), &mut due);
        assert!(due.is_empty());
        w.expire(t0 + Duration::from_millis(12), &mut due);
        assert_eq!(due, vec![(1, 0)]);
        due.clear();
        // Several turns of the wheel pass; the 20 s entry waits for its round.
        w.expire(t0 + Duration::from_secs(19), &mut due);
        assert!(due.is_empty());
        w.expire(t0 + Duration::from_secs(21), &mut due);
        assert_eq!(due, vec![(2, 0)]);
        assert!(w.is_empty());
    }

    #[test]
    fn a_long_sleep_visits_each_slot_once() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        for k in 0..3000 {
            w.insert(t0 + Duration::from_millis(k as u64 * 3), k, 7);
        }
        let mut due = Vec::new();
        w.expire(t0 + Duration::from_secs(3600), &mut due);
        assert_eq!(due.len(), 3000);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn next_timeout_points_at_the_first_busy_slot() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        assert_eq!(w.next_timeout(t0), None);
        w.insert(t0 + Duration::from_millis(100), 1, 0);
        let d = w.next_timeout(t0).unwrap();
        assert!(
            d >= Duration::from_millis(100) && d < Duration::from_millis(105),
            "{d:?}"
        );
    }
}

//! A hashed timer wheel for per-connection deadlines: O(1) to arm and to
//! disarm, and each expiry touches one slot.
//!
//! Entries are checked lazily: an expired entry only means "ask this
//! connection what is due" (`Conn::handle_timeout` ignores early calls),
//! so a deadline that moved later needs no change. The backend re-arms a
//! connection only when its deadline moves *earlier* than what is armed,
//! removing the old entry, and removes its entry when it closes: the wheel
//! holds at most one entry per open connection.

use std::time::{Duration, Instant};

/// Slot width. Deadlines are seconds long; 4 ms keeps them within a tick
/// of exact without waking the loop more than 250 times a second.
pub const TICK: Duration = Duration::from_millis(4);
// NOTE(cast): 4 ms in nanoseconds fits in u64.
const TICK_NANOS: u64 = TICK.as_nanos() as u64;
/// Slots in one turn of the wheel (4 ms x 1024 = 4.1 s). Longer deadlines
/// wait a few turns in their slot.
const SLOTS: usize = 1024;

/// Timer entries of one core, keyed by (slab key, generation).
///
/// Entries live in one arena (`timers`, reused through a free list), and
/// each slot is a doubly linked list through it. One `Vec` per slot kept
/// the capacity of the most entries each slot ever held; under churn every
/// slot met its peak sooner or later and RSS crept for minutes
/// (scripts/soak.sh). Entries of closed connections used to stay until
/// their deadline (15 s to 60 s), so the arena followed the connection
/// *rate*; now it grows to the most connections open at once.
#[derive(Debug)]
pub struct Wheel {
    timers: Vec<Timer>,
    /// First entry of each slot's list.
    heads: Vec<u32>,
    /// First unused entry of the arena.
    free: u32,
    origin: Instant,
    /// The next tick to expire.
    cursor: u64,
    len: usize,
}

/// One armed deadline, 24 bytes.
#[derive(Clone, Copy, Debug)]
struct Timer {
    key: u32,
    gen: u32,
    tick: u64,
    /// Next entry in the same list (a slot's, or the free list).
    next: u32,
    /// Previous entry in the slot's list; `FREE` on the free list.
    prev: u32,
}

/// Where a connection's deadline is armed: its tick (high 40 bits) and
/// its entry in the arena (low 24 bits), in one word for the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Armed(u64);

impl Armed {
    /// Not in the wheel: later than any tick.
    pub const NONE: Armed = Armed(u64::MAX);

    /// The tick it fires in (`u64::MAX >> 24` for `NONE`).
    pub fn tick(self) -> u64 {
        self.0 >> 24
    }

    fn entry(self) -> u32 {
        // NOTE(cast): the low 24 bits.
        (self.0 & 0xff_ffff) as u32
    }
}

/// `prev` of an entry on the free list.
const FREE: u32 = u32::MAX - 1;
/// Entries the arena may hold: `Armed` has 24 bits for the index.
const MAX_ENTRIES: usize = 1 << 24;

/// End of a list.
const NIL: u32 = u32::MAX;

impl Wheel {
    /// An empty wheel whose tick 0 is `origin`.
    pub fn new(origin: Instant) -> Wheel {
        Wheel {
            timers: Vec::new(),
            heads: vec![NIL; SLOTS],
            free: NIL,
            origin,
            cursor: 0,
            len: 0,
        }
    }

    /// The tick a deadline falls in, rounded up so nothing fires early.
    pub fn tick_of(&self, at: Instant) -> u64 {
        self.nanos_since_origin(at).div_ceil(TICK_NANOS)
    }

    /// In u64 (584 years), so dividing by the tick is a multiplication,
    /// not a 128-bit division call on every arm.
    fn nanos_since_origin(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.origin);
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
    }

    /// Arms `(key, gen)` for `at`; returns where, for `remove`. With
    /// 2^24 entries armed (more connections than one core can hold), the
    /// entry is not armed and `Armed::NONE` comes back.
    pub fn insert(&mut self, at: Instant, key: usize, gen: u32) -> Armed {
        let tick = self.tick_of(at).max(self.cursor).min((u64::MAX >> 24) - 1);
        let slot = (tick % SLOTS as u64) as usize;
        // Slab keys stay below 2^32 (io_uring's user_data holds 32 bits);
        // a key that did not would find no slot when it fires, harmlessly.
        let key = u32::try_from(key).unwrap_or(u32::MAX);
        let head = self.heads[slot];
        let timer = Timer {
            key,
            gen,
            tick,
            next: head,
            prev: NIL,
        };
        let at = if self.free != NIL {
            let at = self.free;
            self.free = self.timers[at as usize].next;
            self.timers[at as usize] = timer;
            at
        } else if self.timers.len() < MAX_ENTRIES {
            self.timers.push(timer);
            // NOTE(cast): below MAX_ENTRIES, which fits 24 bits.
            (self.timers.len() - 1) as u32
        } else {
            return Armed::NONE;
        };
        if head != NIL {
            self.timers[head as usize].prev = at;
        }
        self.heads[slot] = at;
        self.len += 1;
        Armed(tick << 24 | u64::from(at))
    }

    /// Whether `armed` is still in the wheel for `(key, gen)`: false once
    /// it fired (an expiry hands out several entries at once, and one
    /// connection's handling may re-arm another whose entry is among them).
    pub fn holds(&self, armed: Armed, key: usize, gen: u32) -> bool {
        let Some(t) = self.timers.get(armed.entry() as usize) else {
            return false;
        };
        armed != Armed::NONE
            && t.prev != FREE
            && u32::try_from(key).is_ok_and(|k| k == t.key)
            && t.gen == gen
            && t.tick == armed.tick()
    }

    /// Disarms what `insert` armed for `(key, gen)`. Does nothing if that
    /// entry already fired (it may since have been reused by another).
    pub fn remove(&mut self, armed: Armed, key: usize, gen: u32) {
        if self.holds(armed, key, gen) {
            self.unlink(armed.entry());
        }
    }

    /// Takes entry `at` out of its slot's list onto the free list.
    fn unlink(&mut self, at: u32) {
        let t = self.timers[at as usize];
        if t.prev == NIL {
            let slot = (t.tick % SLOTS as u64) as usize;
            self.heads[slot] = t.next;
        } else {
            self.timers[t.prev as usize].next = t.next;
        }
        if t.next != NIL {
            self.timers[t.next as usize].prev = t.prev;
        }
        let free = &mut self.timers[at as usize];
        free.next = self.free;
        free.prev = FREE;
        self.free = at;
        self.len -= 1;
    }

    /// Moves every entry due at `now` into `due`.
    pub fn expire(&mut self, now: Instant, due: &mut Vec<(usize, u32)>) {
        let until = self.nanos_since_origin(now) / TICK_NANOS;
        if until < self.cursor {
            return;
        }
        if self.len > 0 {
            let visits = (until - self.cursor + 1).min(SLOTS as u64);
            for i in 0..visits {
                let slot = ((self.cursor + i) % SLOTS as u64) as usize;
                self.expire_slot(slot, until, due);
            }
        }
        self.cursor = until + 1;
    }

    /// Unlinks the entries of `slot` due by tick `until` into `due`.
    fn expire_slot(&mut self, slot: usize, until: u64, due: &mut Vec<(usize, u32)>) {
        let mut at = self.heads[slot];
        while at != NIL {
            let t = self.timers[at as usize];
            if t.tick <= until {
                due.push((t.key as usize, t.gen));
                self.unlink(at);
            }
            at = t.next;
        }
    }

    /// How long the loop may sleep before the next slot with entries is
    /// due; `None` when the wheel is empty.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let ahead = (0..SLOTS as u64)
            .find(|i| self.heads[((self.cursor + i) % SLOTS as u64) as usize] != NIL)
            .unwrap_or(SLOTS as u64);
        // u64 nanoseconds: a u32 tick count would saturate after 199 days
        // of uptime and turn every wait into a busy zero.
        let nanos = (self.cursor + ahead).saturating_mul(TICK_NANOS);
        let at = self.origin + Duration::from_nanos(nanos);
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
    fn fired_entries_are_reused_so_the_arena_stops_at_its_peak() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let mut due = Vec::new();
        for round in 0..50u64 {
            let now = t0 + Duration::from_millis(round * 40);
            for k in 0..100 {
                w.insert(now + Duration::from_millis(k % 30), k as usize, 1);
            }
            w.expire(now + Duration::from_millis(40), &mut due);
        }
        assert_eq!(due.len(), 5000);
        assert!(w.is_empty());
        assert!(w.timers.len() <= 100, "arena grew to {}", w.timers.len());
    }

    #[test]
    fn removed_entries_never_fire_and_are_reused() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let a = w.insert(t0 + Duration::from_millis(100), 1, 5);
        let b = w.insert(t0 + Duration::from_millis(100), 2, 5);
        let c = w.insert(t0 + Duration::from_millis(100), 3, 5);
        w.remove(b, 2, 5);
        w.remove(b, 2, 5);
        w.remove(a, 1, 6);
        assert_eq!(
            w.len(),
            2,
            "a second removal, or the wrong generation, does nothing"
        );
        let d = w.insert(t0 + Duration::from_millis(200), 4, 5);
        assert_eq!(d.entry(), b.entry(), "the freed entry is reused first");
        w.remove(b, 2, 5);
        assert_eq!(
            w.len(),
            3,
            "a stale handle does not remove the entry's new owner"
        );
        let mut due = Vec::new();
        w.expire(t0 + Duration::from_millis(300), &mut due);
        due.sort();
        assert_eq!(due, vec![(1, 5), (3, 5), (4, 5)]);
        w.remove(c, 3, 5);
        assert!(w.is_empty());
        assert_eq!(w.timers.len(), 3, "the arena holds the most armed at once");
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

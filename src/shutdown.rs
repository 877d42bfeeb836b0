//! The one shared shutdown flag, the signals that set it, and the wakers
//! that make every core notice at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::notify::Notifier;

/// Something that interrupts a core's wait (a mio `Waker`, an eventfd).
pub trait Wake: Send + Sync {
    /// Makes the core's loop return from its wait soon.
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        if let Err(e) = mio::Waker::wake(self) {
            log::warn!("cannot wake a core for shutdown: {e}");
        }
    }
}

/// A cloneable handle to the process-wide shutdown flag.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    flag: AtomicBool,
    /// Shutdown was asked for; the drain may start later (`drain_delay`).
    announced: AtomicBool,
    /// The drain hands the listeners to a new process (`hand_off`).
    handoff: AtomicBool,
    /// Touched at start (one push per core) and once at shutdown; never on
    /// the request path.
    wakers: Mutex<Vec<Arc<dyn Wake>>>,
}

impl Shutdown {
    /// A flag that is not set.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts a graceful shutdown: every core stops accepting, answers what
    /// it has received, and exits. Calling it again does nothing more.
    pub fn trigger(&self) {
        self.announce();
        self.inner.flag.store(true, Ordering::Release);
        let wakers = self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for w in wakers.iter() {
            w.wake();
        }
    }

    /// Starts the drain of a process whose listeners a new process now
    /// serves (a binary upgrade): as `trigger`, but idle connections get
    /// a moment to send one more request (`io::HANDOFF_IDLE`), so a client
    /// in a stream of requests sees `Connection: close` rather than a close.
    pub fn hand_off(&self) {
        self.inner.handoff.store(true, Ordering::Release);
        self.trigger();
    }

    /// Whether the drain is a handoff (`hand_off`).
    pub fn is_handoff(&self) -> bool {
        self.inner.handoff.load(Ordering::Acquire)
    }

    /// Says that shutdown is coming: `is_ready` turns false (so `/readyz`
    /// answers 503) while the cores keep serving until `trigger`.
    pub fn announce(&self) {
        self.inner.announced.store(true, Ordering::Release);
    }

    /// Whether the server still wants new traffic: false from `announce`
    /// (or `trigger`) on.
    pub fn is_ready(&self) -> bool {
        !self.inner.announced.load(Ordering::Acquire)
    }

    /// Whether shutdown has started. One atomic load, read once per loop turn.
    #[inline]
    pub fn is_triggered(&self) -> bool {
        self.inner.flag.load(Ordering::Acquire)
    }

    /// Registers a core's waker; a core registered after `trigger` is woken
    /// at once.
    pub fn add_waker(&self, waker: Arc<dyn Wake>) {
        let mut wakers = self
            .inner
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.is_triggered() {
            waker.wake();
        }
        wakers.push(waker);
    }

    /// Starts a thread that, on the first SIGTERM or SIGINT, announces
    /// shutdown, keeps serving for `drain_delay`, then triggers the drain;
    /// a second signal (during the delay too) exits the process at once
    /// with 128 + the signal number.
    pub fn handle_signals(
        &self,
        drain_delay: Duration,
        notifier: Arc<Notifier>,
    ) -> std::io::Result<()> {
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        let shutdown = self.clone();
        thread::Builder::new()
            .name("coreloop-signals".into())
            .spawn(move || {
                // The first signal waits here; one more, in the same batch
                // or later, exits at once. (Not `is_ready`: an embedder may
                // announce on its own before any signal.)
                let mut first = None;
                while first.is_none() {
                    for signal in signals.wait() {
                        if first.is_some() {
                            exit_now(signal);
                        }
                        first = Some(signal);
                    }
                }
                let signal = first.unwrap_or(SIGTERM);
                if shutdown.is_handoff() {
                    // Draining after an upgrade already: this signal asks
                    // for what is under way; only a second one cuts it short.
                    log::info!(
                        "signal {signal}: draining already (handed over to a new process); send it again to exit at once"
                    );
                    if let Some(again) = signals.forever().next() {
                        exit_now(again);
                    }
                    return;
                }
                if shutdown.is_triggered() {
                    // The embedder already started the drain.
                    exit_now(signal);
                }
                shutdown.announce();
                if !shutdown.is_handoff() {
                    notifier.stopping();
                }
                if !drain_delay.is_zero() {
                    log::info!(
                        "signal {signal}: not ready (/readyz 503); serving {drain_delay:?} more, then draining (send it again to exit at once)"
                    );
                    let until = Instant::now() + drain_delay;
                    while Instant::now() < until {
                        if let Some(again) = signals.pending().next() {
                            exit_now(again);
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                }
                log::info!(
                    "signal {signal}: shutting down gracefully (send it again to exit at once)"
                );
                shutdown.trigger();
                if let Some(again) = signals.forever().next() {
                    exit_now(again);
                }
            })?;
        Ok(())
    }
}

fn exit_now(signal: i32) -> ! {
    log::warn!("second signal {signal}: exiting now");
    std::process::exit(128 + signal);
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

//! The one shared shutdown flag, the signals that set it, and the wakers
//! that make every core notice at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

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

    /// Starts a thread that triggers shutdown on the first SIGTERM or SIGINT
    /// and exits the process at once, with 128 + the signal number, on the
    /// second.
    pub fn handle_signals(&self) -> std::io::Result<()> {
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        let shutdown = self.clone();
        thread::Builder::new()
            .name("coreloop-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if shutdown.is_triggered() {
                        log::warn!("second signal {signal}: exiting now");
                        std::process::exit(128 + signal);
                    }
                    log::info!(
                        "signal {signal}: shutting down gracefully (send it again to exit at once)"
                    );
                    shutdown.trigger();
                }
            })?;
        Ok(())
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

//! Threads started inside a PostgreSQL backend must never run Postgres' signal handlers: those
//! touch backend state and must run on the main thread. Every thread we start blocks all signals.

use std::thread::{Builder, JoinHandle};

/// Spawns a named thread with every signal blocked. The calling thread's mask is restored before
/// returning, whatever happens.
pub fn spawn_signal_free<F, T>(name: &str, f: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // The new thread inherits the blocked mask.
    with_signals_blocked(|| Builder::new().name(name.to_string()).spawn(f))
}

/// Runs `f` with every signal blocked on the calling thread, so that the threads `f` starts (a
/// tokio runtime's workers, say) inherit the blocked mask; the caller's mask is restored after.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores a mask pthread_sigmask itself returned.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
        }
    }
    // SAFETY: sigset_t is plain data; pthread_sigmask only reads `all` and writes `previous`.
    let _restore = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        Restore(previous)
    };
    f()
}

/// True when the calling thread blocks every signal that can be blocked (all but SIGKILL and
/// SIGSTOP), real-time signals included.
pub fn all_signals_blocked() -> bool {
    // SAFETY: as above.
    unsafe {
        let mut current: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut current);
        (1..=libc::SIGRTMAX())
            .filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
            // glibc reserves two real-time signals for itself and never reports them blocked.
            .filter(|&s| s < 32 || s >= libc::SIGRTMIN())
            .all(|s| libc::sigismember(&current, s) == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_thread_blocks_signals_and_caller_mask_is_restored() {
        assert!(!all_signals_blocked(), "test threads start with signals unblocked");
        let inside = spawn_signal_free("probe", all_signals_blocked).unwrap().join().unwrap();
        assert!(inside);
        assert!(!all_signals_blocked(), "caller's mask restored");
    }
}

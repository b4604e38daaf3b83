//! Compiling untrusted WebAssembly in a child process.
//!
//! Cranelift cannot be interrupted, and the time and memory it needs do not follow the input's
//! size (a 150 000-function component took 12–16 s and about 1 GB). So the host compiles in a
//! forked child: the child's address space is capped (`RLIMIT_AS`), the parent waits on a pipe
//! while polling whether it must stop, and stopping (or an error unwinding through the parent)
//! kills the child at once. The host's own memory never grows by what the compiler needs.
//!
//! The child runs only this module's code on a copy of the parent's memory, writes the machine
//! code (or the compile error) to the pipe and leaves with `_exit`: it never returns into the
//! host (a PostgreSQL backend), runs none of its exit handlers and takes none of its signals.
//! Nothing else may run in the host's other threads while it forks (no guest call is active
//! during registration: the epoch ticker and WASI's runtime are idle).

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::sandbox::{self, SandboxError};

/// How long the parent waits on the pipe before asking whether it must stop.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Exit status of a compiler process whose allocation the address-space cap refused.
const OUT_OF_MEMORY: c_int = 99;

/// Set in the compiler process only.
static IN_COMPILER_PROCESS: AtomicBool = AtomicBool::new(false);

/// The system allocator, except that in the compiler process a refused allocation ends the
/// process at once with [`OUT_OF_MEMORY`]. Rust's own reaction (print, then abort) takes the
/// standard library's backtrace lock, which another thread of the parent may have held when it
/// forked: the child would wait for it forever.
pub struct Allocator;

// SAFETY: forwards to the system allocator; only adds an exit on failure.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        refused(unsafe { System.alloc(layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        refused(unsafe { System.alloc_zeroed(layout) })
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        refused(unsafe { System.realloc(ptr, layout, new_size) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[inline]
fn refused(ptr: *mut u8) -> *mut u8 {
    if ptr.is_null() && IN_COMPILER_PROCESS.load(Ordering::Relaxed) {
        // SAFETY: ends the compiler process, running nothing of the parent's.
        unsafe { libc::_exit(OUT_OF_MEMORY) }
    }
    ptr
}

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// What to compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Module,
    Component,
}

/// Compiles `bytes` with the process's engine in a child process whose address space may grow by
/// at most `memory_limit` bytes; returns the machine code (`Engine::precompile_*`'s output,
/// loadable with `deserialize` in this process). `stop` is polled about every 50 ms: returning
/// true kills the child and returns [`SandboxError::Interrupted`]; a panic in it (a host that
/// raises its cancel error there) kills the child too.
pub fn precompile(
    bytes: &[u8],
    kind: Kind,
    memory_limit: usize,
    mut stop: impl FnMut() -> bool,
) -> Result<Vec<u8>, SandboxError> {
    // Created in the parent, so the child compiles with exactly this engine's configuration.
    let engine = sandbox::engine();
    let mut fds: [c_int; 2] = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("cannot create a pipe for the compiler"));
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    // SAFETY: getpid and fork have no preconditions; the child only runs `child`.
    let parent = unsafe { libc::getpid() };
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let err = os_error("cannot start the compiler process");
        // SAFETY: closing the descriptors pipe2 returned.
        unsafe {
            libc::close(read_fd);
            libc::close(write_fd);
        }
        return Err(err);
    }
    if pid == 0 {
        // SAFETY: in the child: the read end is the parent's.
        unsafe { libc::close(read_fd) };
        child(engine, bytes, kind, memory_limit, write_fd, parent);
    }
    // SAFETY: the write end is the child's.
    unsafe { libc::close(write_fd) };
    let mut process = Child { pid, fd: read_fd, status: None };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let mut pfd = libc::pollfd { fd: read_fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL_EVERY.as_millis() as c_int) };
        if ready <= 0 {
            if ready < 0 && errno() != libc::EINTR {
                return Err(os_error("cannot wait for the compiler process"));
            }
            // A timeout or a signal (a cancel arrives as one): ask whether to stop.
            if stop() {
                return Err(SandboxError::Interrupted);
            }
            continue;
        }
        // SAFETY: reads into a buffer of buf.len() bytes.
        let n = unsafe { libc::read(read_fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => break,
            n if n > 0 => out.extend_from_slice(&buf[..n as usize]),
            _ if errno() == libc::EINTR || errno() == libc::EAGAIN => {}
            _ => return Err(os_error("cannot read from the compiler process")),
        }
    }
    let status = process.wait();
    decode(&out, status, memory_limit)
}

/// The child process; killed and reaped when dropped before it was waited for.
struct Child {
    pid: libc::pid_t,
    fd: c_int,
    status: Option<c_int>,
}

impl Child {
    /// Waits for the child to end; its wait status (`None` if it cannot be known).
    fn wait(&mut self) -> Option<c_int> {
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                self.status = Some(status);
                return self.status;
            }
            if r < 0 && errno() == libc::EINTR {
                continue;
            }
            // ECHILD (SIGCHLD ignored by the host): the pipe's contents decide.
            self.status = Some(0);
            return None;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: kills and reaps our own child (if not waited for yet), closes our descriptor.
        unsafe {
            if self.status.is_none() {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                while libc::waitpid(self.pid, &mut status, 0) < 0 && errno() == libc::EINTR {}
            }
            libc::close(self.fd);
        }
    }
}

/// The child: compile, write the frame, `_exit`. Never returns.
fn child(
    engine: &wasmtime::Engine,
    bytes: &[u8],
    kind: Kind,
    memory_limit: usize,
    fd: c_int,
    parent: libc::pid_t,
) -> ! {
    IN_COMPILER_PROCESS.store(true, Ordering::Relaxed);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: plain process-state calls on this (single-threaded) child.
        unsafe {
            // The host's signal handlers must never run here: default actions (most terminate).
            for signal in 1..32 {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // Ends with the parent, whatever happens to it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(3);
            }
            let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            let cap = address_space().saturating_add(memory_limit as u64);
            let cap = libc::rlimit { rlim_cur: cap, rlim_max: cap };
            libc::setrlimit(libc::RLIMIT_AS, &cap);
        }
        let compiled = match kind {
            Kind::Component => engine.precompile_component(bytes),
            Kind::Module => engine.precompile_module(bytes),
        };
        let frame = encode(compiled.map_err(sandbox::compile_error));
        write_all(fd, &frame)
    }));
    let code = match outcome {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(_) => 2,
    };
    // SAFETY: leaves without running the host's exit handlers.
    unsafe { libc::_exit(code) }
}

/// The address space of this process in bytes (`/proc/self/statm`'s first field).
fn address_space() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page
}

fn write_all(fd: c_int, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: writes from a valid slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

// The frame on the pipe: b'O' + machine code, or b'I' / b'R' (invalid module / resource limit)
// + message + NUL + detail.

fn encode(result: Result<Vec<u8>, SandboxError>) -> Vec<u8> {
    match result {
        Ok(code) => {
            let mut frame = Vec::with_capacity(code.len() + 1);
            frame.push(b'O');
            frame.extend_from_slice(&code);
            frame
        }
        Err(SandboxError::InvalidModule { message, detail }) => {
            let mut frame = vec![b'I'];
            frame.extend_from_slice(message.as_bytes());
            frame.push(0);
            frame.extend_from_slice(detail.unwrap_or_default().as_bytes());
            frame
        }
        Err(other) => {
            let message = match other {
                SandboxError::Resource(m) => m,
                other => other.to_string(),
            };
            let mut frame = vec![b'R'];
            frame.extend_from_slice(message.as_bytes());
            frame
        }
    }
}

fn decode(frame: &[u8], status: Option<c_int>, memory_limit: usize) -> Result<Vec<u8>, SandboxError> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let exited_cleanly = status.is_none_or(|s| libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0);
    match frame.split_first() {
        Some((b'O', code)) if exited_cleanly => Ok(code.to_vec()),
        Some((b'I', rest)) => {
            let (message, detail) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (text(&rest[..i]), text(&rest[i + 1..])),
                None => (text(rest), String::new()),
            };
            Err(SandboxError::InvalidModule { message, detail: (!detail.is_empty()).then_some(detail) })
        }
        Some((b'R', rest)) => Err(SandboxError::Resource(text(rest))),
        _ => match status {
            // An allocation the address-space cap refused (see `Allocator`), or an abort.
            Some(s) if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == OUT_OF_MEMORY => {
                Err(SandboxError::CompileMemory { limit: memory_limit })
            }
            Some(s) if libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGABRT => {
                Err(SandboxError::CompileMemory { limit: memory_limit })
            }
            Some(s) if libc::WIFSIGNALED(s) => Err(SandboxError::Internal(format!(
                "the compiler process ended by signal {}",
                libc::WTERMSIG(s)
            ))),
            Some(s) => Err(SandboxError::Internal(format!(
                "the compiler process exited with status {} and no result",
                libc::WEXITSTATUS(s)
            ))),
            None => Err(SandboxError::Internal("the compiler process gave no result".into())),
        },
    }
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn os_error(what: &str) -> SandboxError {
    SandboxError::Internal(format!("{what}: {}", std::io::Error::last_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn never() -> bool {
        false
    }

    #[test]
    fn compiles_in_a_child_and_the_code_loads_here() {
        let wat = br#"(module (func (export "run") (result i64) i64.const 42))"#;
        let code = precompile(wat, Kind::Module, 1 << 30, never).unwrap();
        // SAFETY: machine code this process's engine just produced.
        let module = unsafe { wasmtime::Module::deserialize(sandbox::engine(), &code) }.unwrap();
        let limits = sandbox::Limits::default();
        assert_eq!(sandbox::call_export(&module, "run", &limits, sandbox::Cancel::Never), Ok(42));
    }

    #[test]
    fn compile_errors_come_back_as_they_are() {
        match precompile(b"(module (func (export \"run\") i32.bogus))", Kind::Module, 1 << 30, never) {
            Err(SandboxError::InvalidModule { message, detail }) => {
                assert!(!message.contains('\n'), "{message}");
                assert!(detail.is_some_and(|d| d.contains("1:")));
            }
            other => panic!("{other:?}"),
        }
        // The pool's limits are checked when the code is loaded here.
        let many = format!("(module {} (func (export \"run\")))", "(memory 0) ".repeat(9));
        assert!(matches!(
            sandbox::compile_isolated(many.as_bytes(), 1 << 30, never),
            Err(SandboxError::Resource(m)) if m.contains("per-instance limit")
        ));
    }

    /// Many functions: enough work that the child is still compiling when stopped or capped.
    fn heavy() -> String {
        let body = "(local.get 0) (i32.const 3) (i32.mul) (i32.const 7) (i32.add) ".repeat(40);
        let funcs: String =
            (0..20_000).map(|i| format!("(func $f{i} (param i32) (result i32) {body})")).collect();
        format!("(module {funcs} (func (export \"run\")))")
    }

    #[test]
    fn stopping_kills_the_compiler_at_once() {
        let wat = heavy();
        let started = Instant::now();
        let mut polls = 0;
        let result = precompile(wat.as_bytes(), Kind::Module, 4 << 30, || {
            polls += 1;
            polls > 2
        });
        assert_eq!(result, Err(SandboxError::Interrupted));
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn a_compile_over_its_memory_cap_is_refused() {
        let wat = heavy();
        assert_eq!(
            precompile(wat.as_bytes(), Kind::Module, 8 << 20, never),
            Err(SandboxError::CompileMemory { limit: 8 << 20 })
        );
    }
}

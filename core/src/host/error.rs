//! What goes wrong in a make call, as typed errors: the host's refusals ([`HostError`]) and the
//! classification of a failed call ([`failure`]). Each host maps a [`Kind`] to its own codes (the
//! extension to SQLSTATEs, in one place).

use std::fmt;

use crate::algebra::{AlgebraError, Code};
use crate::make::{MakeError, Output};
use crate::sandbox::SandboxError;

/// What kind of refusal or failure.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// Reading or writing outside the make's scope, or rows of another key (SQLSTATE 42501).
    Privilege,
    /// An attribute the table or expression does not have (42703).
    UndefinedColumn,
    /// An attribute given twice in one row (42701).
    DuplicateColumn,
    /// A malformed restriction or order term (42601).
    Syntax,
    /// Text with a NUL character, which the database cannot hold (22021).
    Nul,
    /// fetch1 found no row (P0002).
    NoRow,
    /// fetch1 found several rows (P0003).
    SeveralRows,
    /// A malformed argument, such as an object reference that is not one (22023).
    Value,
    /// A guest's object could not be kept on the way to its store (58030).
    Io,
    /// More bytes than the guest's memory limit leaves (53200).
    Memory,
    /// A configured limit reached, such as temp_file_limit (53400).
    Limit,
    /// A relation expression the algebra refused, with the algebra's own code.
    Algebra(Code),
    /// The guest returned `err(message)` (38000).
    Guest,
    /// The guest trapped, ran out of time, fuel or memory, or could not run.
    Sandbox(SandboxError),
}

/// A refusal or failure with what the user needs: a message, maybe a detail, a hint.
#[derive(Clone, Debug, PartialEq)]
pub struct HostError {
    pub kind: Kind,
    pub message: String,
    pub detail: Option<String>,
    pub hint: String,
}

impl HostError {
    pub fn new(kind: Kind, message: impl Into<String>, hint: impl Into<String>) -> HostError {
        HostError { kind, message: message.into(), detail: None, hint: hint.into() }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> HostError {
        self.detail = Some(detail.into());
        self
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<AlgebraError> for HostError {
    fn from(e: AlgebraError) -> Self {
        HostError::new(Kind::Algebra(e.code), e.message, e.hint).detail(format!("at: {}", e.fragment))
    }
}

/// Characters of a guest's stderr kept in a failure's DETAIL (its end: where it failed).
pub const STDERR_TAIL: usize = 2000;

/// Characters of a guest's own error message kept.
pub const GUEST_MESSAGE: usize = 4000;

/// A failed make as the error its user sees: the host's own error unchanged; the guest's refusal
/// or a sandbox stop with the guest's panic message and the end of its stderr. `target` names
/// the table, for the hint.
pub fn failure<E: From<HostError>>(e: MakeError<E>, output: &Output, target: &str) -> E {
    match e {
        MakeError::Host(err) => err,
        MakeError::Guest(message) => HostError::new(
            Kind::Guest,
            format!("make function returned an error: {}", truncated(&message, GUEST_MESSAGE)),
            format!("The make function of {target} refused this key; nothing it inserted is kept."),
        )
        .into(),
        MakeError::Sandbox(err) => {
            let mut out = HostError::new(Kind::Sandbox(err.clone()), "", "");
            out.message = match (&err, output.panic_message()) {
                (SandboxError::Trap { .. }, Some(p)) => {
                    format!("make function panicked: {}", truncated(&p, GUEST_MESSAGE))
                }
                _ => format!("make function stopped: {err}"),
            };
            if let SandboxError::Trap { backtrace, .. } = &err {
                out.detail = backtrace.clone();
                out.hint =
                    "The make function failed; the DETAIL shows where. Nothing it inserted is kept.".into();
            }
            let stderr = output.stderr.trim_end();
            if !stderr.is_empty() {
                let tail = tail(stderr, STDERR_TAIL);
                out.detail = Some(match out.detail {
                    Some(d) => format!("{d}\nguest stderr: {tail}"),
                    None => format!("guest stderr: {tail}"),
                });
            }
            out.into()
        }
    }
}

/// The first `n` characters of `text`, marked when cut.
pub fn truncated(text: &str, n: usize) -> String {
    match text.char_indices().nth(n) {
        Some((at, _)) => format!("{}… ({} more characters)", &text[..at], text[at..].chars().count()),
        None => text.to_string(),
    }
}

/// The last `n` characters of `text`.
fn tail(text: &str, n: usize) -> &str {
    let count = text.chars().count();
    match text.char_indices().nth(count.saturating_sub(n)) {
        Some((at, _)) if count > n => &text[at..],
        _ => text,
    }
}

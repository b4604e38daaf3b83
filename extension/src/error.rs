//! The one place where errors become PostgreSQL errors: each with a SQLSTATE, a message that says
//! what went wrong, a DETAIL where it helps, and a HINT that says what to do.

use datajoint_core::algebra::{AlgebraError, Code};
use datajoint_core::definition::{DefinitionError, ErrorKind};
use datajoint_core::host::{HostError, Kind};
use datajoint_core::sandbox::SandboxError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// An error on its way to the client.
#[derive(Debug)]
pub struct DjError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: String,
}

pub type DjResult<T> = Result<T, DjError>;

impl DjError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> Self {
        DjError { code, message: message.into(), detail: None, hint: hint.into() }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Raises the ERROR. Never returns.
    pub fn raise(self, funcname: &'static str) -> ! {
        // A cancel or shutdown that stopped the work raises as Postgres' own error instead.
        pgrx::check_for_interrupts!();
        // Text from a guest or a caller may hold NUL, which a C string cannot: show it as \0.
        let clean = |s: String| if s.contains('\0') { s.replace('\0', "\\0") } else { s };
        let mut report = ErrorReport::new(self.code, clean(self.message), funcname);
        if !self.hint.is_empty() {
            report = report.set_hint(clean(self.hint));
        }
        if let Some(detail) = self.detail {
            report = report.set_detail(clean(detail));
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// `result.or_raise("dj.declare")`: the value, or the ERROR.
pub trait OrRaise<T> {
    fn or_raise(self, funcname: &'static str) -> T;
}

impl<T, E: Into<DjError>> OrRaise<T> for Result<T, E> {
    fn or_raise(self, funcname: &'static str) -> T {
        self.unwrap_or_else(|e| e.into().raise(funcname))
    }
}

impl From<pgrx::spi::Error> for DjError {
    fn from(e: pgrx::spi::Error) -> Self {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("catalog query failed: {e}"),
            "This is a bug in datajoint; please report it.",
        )
    }
}

impl From<DefinitionError> for DjError {
    fn from(e: DefinitionError) -> Self {
        use PgSqlErrorCode::*;
        let code = match e.kind {
            ErrorKind::Syntax => ERRCODE_SYNTAX_ERROR,
            ErrorKind::UndefinedType => ERRCODE_UNDEFINED_OBJECT,
            ErrorKind::DuplicateColumn => ERRCODE_DUPLICATE_COLUMN,
            ErrorKind::UndefinedColumn => ERRCODE_UNDEFINED_COLUMN,
            ErrorKind::UndefinedTable => ERRCODE_UNDEFINED_TABLE,
            ErrorKind::ReservedName => ERRCODE_RESERVED_NAME,
            ErrorKind::NameTooLong => ERRCODE_NAME_TOO_LONG,
            ErrorKind::InvalidDefinition => ERRCODE_INVALID_TABLE_DEFINITION,
            ErrorKind::DuplicateObject => ERRCODE_DUPLICATE_TABLE,
            ErrorKind::NotSupported => ERRCODE_FEATURE_NOT_SUPPORTED,
        };
        let location = e.location();
        let mut err = DjError::new(code, e.message, e.hint);
        err.detail = location;
        err
    }
}

impl From<SandboxError> for DjError {
    fn from(err: SandboxError) -> Self {
        use PgSqlErrorCode::*;
        let (code, hint, detail) = match &err {
            // The guest stopped because Postgres wants the statement or backend to end: `raise`
            // lets Postgres raise its own error first, with its own SQLSTATE.
            SandboxError::Interrupted => {
                (ERRCODE_QUERY_CANCELED, "The call was interrupted.".to_string(), None)
            }
            SandboxError::Timeout { .. } => (
                ERRCODE_QUERY_CANCELED,
                "Raise dj.make_timeout (SET dj.make_timeout = '10min'), or make the function faster.".into(),
                None,
            ),
            SandboxError::OutOfFuel { .. } => (
                ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                "Raise dj.make_fuel (millions of instructions; 0 = no budget).".into(),
                None,
            ),
            SandboxError::MemoryLimit { .. } => (
                ERRCODE_OUT_OF_MEMORY,
                "A superuser can raise dj.make_memory_limit; otherwise process the data in smaller pieces."
                    .into(),
                None,
            ),
            SandboxError::Resource(message) if message.contains("nested") => (
                ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                "A make function's insert fired a trigger that populates again (and so on): end the chain \
                 sooner, or populate the downstream table on its own."
                    .into(),
                None,
            ),
            SandboxError::Resource(_) => (
                ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                "The module needs more instances, memories or tables than the sandbox allows.".into(),
                None,
            ),
            SandboxError::CompileMemory { .. } => (
                ERRCODE_OUT_OF_MEMORY,
                "A superuser can raise dj.module_compile_memory; otherwise build a smaller module.".into(),
                None,
            ),
            SandboxError::Trap { backtrace, .. } => (
                ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
                "The WebAssembly code failed; the DETAIL shows where.".into(),
                backtrace.clone(),
            ),
            SandboxError::InvalidModule { detail, .. } => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "Pass the bytes of a WebAssembly module (binary, or text format).".into(),
                detail.clone(),
            ),
            SandboxError::UnsupportedImport(_) => (
                ERRCODE_FEATURE_NOT_SUPPORTED,
                "This entry point runs self-contained modules; remove the import.".into(),
                None,
            ),
            SandboxError::MissingExport { available, .. } => (
                ERRCODE_UNDEFINED_FUNCTION,
                if available.is_empty() {
                    "The module exports no functions.".to_string()
                } else {
                    format!("The module exports: {}.", available.join(", "))
                },
                None,
            ),
            SandboxError::WrongSignature { .. } => (
                ERRCODE_INVALID_FUNCTION_DEFINITION,
                "Export a function that takes no arguments and returns nothing, an i32 or an i64.".into(),
                None,
            ),
            SandboxError::Internal(_) => {
                (ERRCODE_INTERNAL_ERROR, "This is a bug in datajoint; please report it.".into(), None)
            }
        };
        DjError { code, message: err.to_string(), detail, hint }
    }
}

impl From<AlgebraError> for DjError {
    fn from(e: AlgebraError) -> Self {
        DjError::new(algebra_code(e.code), e.message, e.hint).detail(format!("at: {}", e.fragment))
    }
}

fn algebra_code(code: Code) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match code {
        Code::Syntax => ERRCODE_SYNTAX_ERROR,
        Code::UndefinedTable => ERRCODE_UNDEFINED_TABLE,
        Code::UndefinedColumn => ERRCODE_UNDEFINED_COLUMN,
        Code::LineageClash => ERRCODE_AMBIGUOUS_COLUMN,
        Code::Incompatible => ERRCODE_DATATYPE_MISMATCH,
        Code::WrongOperand => ERRCODE_WRONG_OBJECT_TYPE,
        Code::NotSupported => ERRCODE_FEATURE_NOT_SUPPORTED,
        Code::InvalidReference => ERRCODE_INVALID_COLUMN_REFERENCE,
        Code::DuplicateColumn => ERRCODE_DUPLICATE_COLUMN,
        Code::InvalidName => ERRCODE_INVALID_NAME,
        Code::InvalidParameter => ERRCODE_INVALID_PARAMETER_VALUE,
        Code::TooComplex => ERRCODE_STATEMENT_TOO_COMPLEX,
    }
}

/// The make host's refusals and failures (datajoint_core::host).
impl From<HostError> for DjError {
    fn from(e: HostError) -> Self {
        use PgSqlErrorCode::*;
        let mut detail = e.detail;
        let (code, default_hint) = match e.kind {
            Kind::Privilege => (ERRCODE_INSUFFICIENT_PRIVILEGE, String::new()),
            Kind::UndefinedColumn => (ERRCODE_UNDEFINED_COLUMN, String::new()),
            Kind::DuplicateColumn => (ERRCODE_DUPLICATE_COLUMN, String::new()),
            Kind::Syntax => (ERRCODE_SYNTAX_ERROR, String::new()),
            Kind::Nul => (ERRCODE_CHARACTER_NOT_IN_REPERTOIRE, String::new()),
            Kind::Value => (ERRCODE_INVALID_PARAMETER_VALUE, String::new()),
            Kind::Io => (ERRCODE_IO_ERROR, String::new()),
            Kind::Memory => (ERRCODE_OUT_OF_MEMORY, String::new()),
            Kind::Limit => (ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, String::new()),
            Kind::NoRow => (ERRCODE_NO_DATA_FOUND, String::new()),
            Kind::SeveralRows => (ERRCODE_TOO_MANY_ROWS, String::new()),
            Kind::Algebra(code) => (algebra_code(code), String::new()),
            Kind::Guest => (ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, String::new()),
            Kind::Sandbox(err) => {
                let mapped = DjError::from(err);
                detail = detail.or(mapped.detail);
                (mapped.code, mapped.hint)
            }
        };
        let hint = if e.hint.is_empty() { default_hint } else { e.hint };
        DjError { code, message: e.message, detail, hint }
    }
}

impl From<datajoint_core::blob::BlobError> for DjError {
    fn from(e: datajoint_core::blob::BlobError) -> Self {
        DjError::new(
            PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
            format!("invalid DataJoint blob: {}", e.message),
            "Blobs are what datajoint-python's blob.pack writes (mYm or dj0 header, ZL123 when compressed); dj.blob_encode makes one from JSON.",
        )
    }
}

impl From<datajoint_core::store::StoreError> for DjError {
    fn from(e: datajoint_core::store::StoreError) -> Self {
        use datajoint_core::store::StoreErrorKind as K;
        use PgSqlErrorCode::*;
        let code = match e.kind {
            K::Spec | K::Key | K::Reference => ERRCODE_INVALID_PARAMETER_VALUE,
            K::NotFound => ERRCODE_UNDEFINED_FILE,
            K::Corrupt => ERRCODE_DATA_CORRUPTED,
            K::Io => ERRCODE_IO_ERROR,
            K::Unsupported => ERRCODE_FEATURE_NOT_SUPPORTED,
        };
        DjError::new(code, e.message, e.hint)
    }
}

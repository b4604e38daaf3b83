//! Write [DataJoint](https://datajoint.com) make functions in Rust for the `datajoint` PostgreSQL
//! extension.
//!
//! A make function is a WebAssembly component (target `wasm32-wasip2`) of world
//! `datajoint:make/make@0.1.1` (see `wit/make.wit`). `dj.populate` calls it once per missing key of
//! its target table, inside a subtransaction: it reads upstream rows with [`fetch`] / [`fetch1`],
//! computes, and writes the target's rows (and its parts') with [`insert`] / [`insert1`]. Returning
//! `Err` fails the key and discards what it inserted.
//!
//! ```ignore
//! use datajoint_make::{fetch1, insert1, Key, Make, Query};
//!
//! struct SpikeRate;
//!
//! impl Make for SpikeRate {
//!     fn make(key: Key) -> Result<(), String> {
//!         let rec = fetch1(Query::new("Recording").attributes(["duration", "spike_count"]));
//!         let rate = rec.get::<i64>("spike_count")? as f64 / rec.get::<f64>("duration")?;
//!         insert1("SpikeRate", key.with("mean_rate", rate));
//!         Ok(())
//!     }
//! }
//!
//! datajoint_make::export!(SpikeRate);
//! ```
//!
//! Host errors (a table the make may not read, an SQL error, no row for `fetch1`, an insert the
//! database refuses) are not returned to the guest: they end the call, and the key is recorded as
//! failed with the host's message. So the host functions here return plain values.

use std::fmt;

// Lets the generated code name this crate by its public path from inside it as well as from the
// user crates that expand `export!`.
extern crate self as datajoint_make;

/// The bindings generated from `wit/make.wit`. Use the wrappers of this crate instead.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "make",
        path: "wit",
        additional_derives: [PartialEq],
        // The export macro is expanded in user crates: it must find both the bindings and the
        // wit-bindgen runtime through this crate, so that users depend on `datajoint-make` only.
        pub_export_macro: true,
        export_macro_name: "__export_make_world",
        default_bindings_module: "datajoint_make::bindings",
        runtime_path: "datajoint_make::__private::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use crate::bindings::datajoint::make::types::Row as WitRow;
    use std::marker::PhantomData;

    /// Adapts a [`Make`](crate::Make) implementation to the generated export trait.
    pub struct Adapter<T>(PhantomData<T>);

    impl<T: crate::Make> crate::bindings::Guest for Adapter<T> {
        fn make(key: WitRow) -> Result<(), String> {
            T::make(crate::Row::from(key))
        }
    }
}

/// Exports a type implementing [`Make`] as the component's `make` function.
///
/// Use it once, at the top level of a `cdylib` crate built for `wasm32-wasip2`:
/// `datajoint_make::export!(MyMake);`
#[macro_export]
#[rustfmt::skip] // rustfmt would misindent the `with_types_in` line
macro_rules! export {
    ($make:ty) => {
        const _: () = {
            // The generated export macro wants an identifier.
            type __DataJointMake = $crate::__private::Adapter<$make>;
            $crate::bindings::__export_make_world!(__DataJointMake with_types_in $crate::bindings);
        };
    };
}

/// One attribute value, typed as PostgreSQL stores it.
///
/// | variant | PostgreSQL / DataJoint types |
/// |---|---|
/// | `Null` | SQL NULL |
/// | `Boolean(bool)` | boolean |
/// | `Int(i64)` | smallint, integer, bigint (int8..int64, uint8..uint32) |
/// | `Float(f64)` | real, double precision (float32, float64) |
/// | `Decimal(String)` | numeric / decimal(p,s), as exact text such as `"-12.50"` |
/// | `Text(String)` | text, varchar, char, enum |
/// | `Bytes(Vec<u8>)` | bytea |
/// | `Json(String)` | json, jsonb (JSON text) |
/// | `Date(i32)` | date: days since 1970-01-01 |
/// | `Time(i64)` | time: microseconds since midnight |
/// | `Timestamp(i64)` | timestamp: µs since 1970-01-01 00:00:00 (timestamptz: since the Unix epoch, UTC) |
/// | `Uuid((u64, u64))` | uuid: (high 64 bits, low 64 bits) |
pub use bindings::datajoint::make::types::Value;

/// One attribute of a [`Row`]: a name and a [`Value`].
pub use bindings::datajoint::make::types::Field;

/// The primary-key attributes of the target entity being made.
pub type Key = Row;

/// A make function. Export it with [`export!`].
pub trait Make {
    /// Computes and inserts the rows of `key`. `Err(message)` fails the key: nothing it inserted
    /// is kept, and `message` is recorded as the key's error.
    fn make(key: Key) -> Result<(), String>;
}

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

macro_rules! value_from {
    ($variant:ident: $($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$variant(v.into())
            }
        }
    )*};
}

value_from!(Boolean: bool);
value_from!(Int: i8, i16, i32, i64, u8, u16, u32);
value_from!(Float: f32, f64);
value_from!(Text: &str, String, &String);
value_from!(Bytes: Vec<u8>, &[u8]);

impl<T: Into<Value>> From<Option<T>> for Value {
    /// `None` is SQL NULL.
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl Value {
    /// The variant's name as in the WIT contract (`"int"`, `"text"`, ...), for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Boolean(_) => "boolean",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Decimal(_) => "decimal",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Json(_) => "json",
            Value::Date(_) => "date",
            Value::Time(_) => "time",
            Value::Timestamp(_) => "timestamp",
            Value::Uuid(_) => "uuid",
        }
    }

    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl fmt::Display for Value {
    /// For messages: `NULL`, `true`, `42`, `1.5`, `'text'`, `<3 bytes>`; the temporal and uuid
    /// values as their variant and raw numbers, e.g. `date(19000)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Decimal(s) | Value::Json(s) => f.write_str(s),
            Value::Text(s) => write!(f, "{}", quote(s)),
            Value::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            Value::Date(d) => write!(f, "date({d})"),
            Value::Time(t) => write!(f, "time({t})"),
            Value::Timestamp(t) => write!(f, "timestamp({t})"),
            Value::Uuid((high, low)) => write!(f, "uuid({high:016x}{low:016x})"),
        }
    }
}

/// Conversion from a [`Value`] to a Rust type, used by [`Row::get`].
///
/// Implemented for the integer types (range-checked), `f64`/`f32` (which also accept `Int`),
/// `bool`, `String` (text, decimal and JSON text), `Vec<u8>`, [`Value`] itself, and `Option<T>`
/// (NULL is `None`; for every other type NULL is an error).
pub trait FromValue: Sized {
    /// Converts `value`, or says why it cannot (the caller adds the attribute's name).
    fn from_value(value: &Value) -> Result<Self, String>;
}

fn mismatch<T>(expected: &str, got: &Value) -> Result<T, String> {
    Err(format!("expected {expected}, got {}", got.kind()))
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self, String> {
                match value {
                    Value::Int(i) => <$t>::try_from(*i)
                        .map_err(|_| format!("{i} is out of range for {}", stringify!($t))),
                    other => mismatch("int", other),
                }
            }
        }
    )*};
}

int_from_value!(i8, i16, i32, i64, u8, u16, u32, u64, usize);

impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Float(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => mismatch("float", other),
        }
    }
}

impl FromValue for f32 {
    fn from_value(value: &Value) -> Result<Self, String> {
        f64::from_value(value).map(|f| f as f32)
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Boolean(b) => Ok(*b),
            other => mismatch("boolean", other),
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(s) | Value::Decimal(s) | Value::Json(s) => Ok(s.clone()),
            other => mismatch("text", other),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Bytes(b) => Ok(b.clone()),
            other => mismatch("bytes", other),
        }
    }
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Result<Self, String> {
        Ok(value.clone())
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

/// A row: attribute names and values, in heading order. Keys are rows too.
///
/// Build one with [`row!`], [`Row::with`] / [`Row::set`], or collect `(name, value)` pairs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    fields: Vec<Field>,
}

impl Row {
    /// An empty row.
    pub fn new() -> Row {
        Row::default()
    }

    /// The value of attribute `name`, converted to `T`: e.g. `row.get::<f64>("duration")?`.
    /// Fails when the row has no such attribute or the value does not convert.
    pub fn get<T: FromValue>(&self, name: &str) -> Result<T, String> {
        let value = self.value(name).ok_or_else(|| format!("no attribute `{name}` in the row"))?;
        T::from_value(value).map_err(|e| format!("attribute `{name}`: {e}"))
    }

    /// The raw value of attribute `name`, if the row has it.
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|f| f.name == name).map(|f| &f.value)
    }

    /// Whether the row has attribute `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.value(name).is_some()
    }

    /// Sets attribute `name` (replacing its value if present, appending it otherwise).
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Value>) -> &mut Row {
        let (name, value) = (name.into(), value.into());
        match self.fields.iter_mut().find(|f| f.name == name) {
            Some(field) => field.value = value,
            None => self.fields.push(Field { name, value }),
        }
        self
    }

    /// This row with attribute `name` set: `key.with("mean_rate", 4.2)`.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Row {
        self.set(name, value);
        self
    }

    /// Removes attribute `name` and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let at = self.fields.iter().position(|f| f.name == name)?;
        Some(self.fields.remove(at).value)
    }

    /// The number of attributes.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the row has no attributes.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The attribute names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.name.as_str())
    }

    /// `(name, value)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.fields.iter().map(|f| (f.name.as_str(), &f.value))
    }

    /// The fields, in order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The fields, as the WIT contract passes them.
    pub fn into_fields(self) -> Vec<Field> {
        self.fields
    }
}

impl From<Vec<Field>> for Row {
    fn from(fields: Vec<Field>) -> Row {
        Row { fields }
    }
}

impl From<Row> for Vec<Field> {
    fn from(row: Row) -> Vec<Field> {
        row.fields
    }
}

impl<N: Into<String>, V: Into<Value>> FromIterator<(N, V)> for Row {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Row {
        let mut row = Row::new();
        row.extend(pairs);
        row
    }
}

impl<N: Into<String>, V: Into<Value>> Extend<(N, V)> for Row {
    /// Sets each attribute in turn (later ones replace earlier ones of the same name).
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, pairs: I) {
        for (name, value) in pairs {
            self.set(name, value);
        }
    }
}

impl IntoIterator for Row {
    type Item = (String, Value);
    type IntoIter = std::iter::Map<std::vec::IntoIter<Field>, fn(Field) -> (String, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.fields.into_iter().map(|f| (f.name, f.value))
    }
}

impl fmt::Display for Row {
    /// `{subject_id: 1, session: 2}`: for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.iter().enumerate() {
            write!(f, "{}{name}: {value}", if i == 0 { "" } else { ", " })?;
        }
        f.write_str("}")
    }
}

/// Builds a [`Row`]: `row! { "unit" => 3, "rate" => 1.5 }`.
#[macro_export]
macro_rules! row {
    ($($name:expr => $value:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut row = $crate::Row::new();
        $( row.set($name, $value); )*
        row
    }};
}

// ---------------------------------------------------------------------------------------------
// Queries and the host functions
// ---------------------------------------------------------------------------------------------

/// A query over one upstream table, always restricted by the current key on the attributes the
/// table shares with it.
///
/// `Query::new("Recording").restrict("duration > 10").attributes(["duration"]).limit(5)`
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    relation: String,
    restrictions: Vec<String>,
    attributes: Vec<String>,
    order_by: Vec<String>,
    limit: Option<u64>,
}

impl Query {
    /// All rows and attributes of `relation`: a class name (`Session`, `lab.Session`,
    /// `Session.Trial`; a bare name is in the target's schema) or an SQL name (`lab.session`).
    /// It must be an ancestor of the target (or of one of its parts). It may also be a relation
    /// expression in the language of SQL's `dj.rel` (`(Session * Scan) & 'depth > 100'`,
    /// `aggr(Recording, Recording.Channel, 'n = count(*)')`) over such tables; the host restricts
    /// its result by the key like a table's.
    pub fn new(relation: impl Into<String>) -> Query {
        Query { relation: relation.into(), ..Query::default() }
    }

    /// Adds an SQL condition over the table's attributes (conditions are ANDed), e.g.
    /// `"depth > 100"` or `format!("probe = {}", quote(&name))`.
    pub fn restrict(mut self, condition: impl Into<String>) -> Query {
        self.restrictions.push(condition.into());
        self
    }

    /// Returns only these attributes (by default: all of the heading).
    pub fn attributes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Query {
        self.attributes.extend(names.into_iter().map(Into::into));
        self
    }

    /// Orders the rows by these attributes, each optionally followed by ` desc` / ` asc`.
    pub fn order_by<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Query {
        self.order_by.extend(names.into_iter().map(Into::into));
        self
    }

    /// Returns at most `n` rows.
    pub fn limit(mut self, n: u64) -> Query {
        self.limit = Some(n);
        self
    }

    fn to_wit(&self) -> host::Query {
        host::Query {
            relation: self.relation.clone(),
            restrictions: self.restrictions.clone(),
            attributes: self.attributes.clone(),
            order_by: self.order_by.clone(),
            limit: self.limit,
        }
    }
}

impl From<&str> for Query {
    /// A bare table name: all its rows (of the current key) and attributes.
    fn from(relation: &str) -> Query {
        Query::new(relation)
    }
}

impl From<String> for Query {
    fn from(relation: String) -> Query {
        Query::new(relation)
    }
}

use bindings::datajoint::make::host;

/// The rows of `query`, restricted by the current key.
pub fn fetch(query: impl Into<Query>) -> Vec<Row> {
    host::fetch(&query.into().to_wit()).into_iter().map(Row::from).collect()
}

/// The one row of `query` restricted by the current key. No row or several rows end the call
/// with an error (the key fails).
pub fn fetch1(query: impl Into<Query>) -> Row {
    Row::from(host::fetch1(&query.into().to_wit()))
}

/// Inserts `rows` into `table` (the target, `Target.Part`, or the bare part name) and returns how
/// many were inserted. Attributes of the current key that a row lacks are filled in from the key.
pub fn insert(table: &str, rows: impl IntoIterator<Item = Row>) -> u64 {
    let rows: Vec<Vec<Field>> = rows.into_iter().map(Row::into_fields).collect();
    host::insert(table, &rows)
}

/// Inserts one row into `table` (see [`insert`]).
pub fn insert1(table: &str, row: Row) {
    insert(table, [row]);
}

/// Quotes `text` as an SQL string literal for restrictions: `quote("O'Hara")` is `'O''Hara'`.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

pub mod objects;
pub use objects::blob;

/// Messages for the user who runs populate.
pub mod log {
    use crate::bindings::datajoint::make::host::{self, Level};

    /// The server log only (LOG), or DEBUG1 to the client.
    pub fn debug(message: impl AsRef<str>) {
        host::log(Level::Debug, message.as_ref());
    }

    /// INFO to the client.
    pub fn info(message: impl AsRef<str>) {
        host::log(Level::Info, message.as_ref());
    }

    /// NOTICE to the client.
    pub fn notice(message: impl AsRef<str>) {
        host::log(Level::Notice, message.as_ref());
    }

    /// WARNING to the client.
    pub fn warning(message: impl AsRef<str>) {
        host::log(Level::Warning, message.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_convert_values() {
        let mut r = row! { "a" => 1, "b" => "x", "c" => None::<i32>, "d" => 2.5 };
        assert_eq!(r.get::<i64>("a"), Ok(1));
        assert_eq!(r.get::<f64>("a"), Ok(1.0));
        assert_eq!(r.get::<String>("b").as_deref(), Ok("x"));
        assert_eq!(r.get::<Option<i32>>("c"), Ok(None));
        assert!(r.get::<i32>("c").unwrap_err().contains("expected int, got null"));
        assert!(r.get::<i32>("zz").unwrap_err().contains("no attribute `zz`"));
        r.set("a", 300);
        assert!(r.get::<u8>("a").unwrap_err().contains("out of range"));
        assert_eq!(r.names().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(quote("O'Hara"), "'O''Hara'");
        assert_eq!(r.to_string(), "{a: 300, b: 'x', c: NULL, d: 2.5}");
    }
}

//! Tables as a make function sees them: the columns it may read and write, with the type each
//! value is converted to.

use crate::dependencies::Table;

/// A column of a table a make function reads or writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type as the database prints it (`integer`, `character varying(16)`), for messages.
    pub type_name: String,
    /// The database's identifier of the type (a PostgreSQL type oid): the host converts values
    /// by it.
    pub type_id: u32,
    pub in_key: bool,
    /// A store attribute (`<blob@store>`, ...): its values are object references.
    pub store: bool,
}

impl Column {
    /// A statement parameter of type `type_id` that is no column of the table (an error message,
    /// a duration).
    pub fn parameter(name: &str, type_id: u32) -> Column {
        Column { name: name.into(), type_name: String::new(), type_id, in_key: false, store: false }
    }

    /// Hidden attributes (`_job_version`, ...) are written by the host, never by a guest.
    pub fn hidden(&self) -> bool {
        self.name.starts_with('_')
    }
}

/// A table and its columns in declaration order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    pub table: Table,
    pub columns: Vec<Column>,
}

impl TableInfo {
    /// Whether rows record the module that made them (datajoint-python's job metadata).
    pub fn has_job_version(&self) -> bool {
        self.column("_job_version").is_some()
    }

    pub fn key(&self) -> Vec<&Column> {
        self.columns.iter().filter(|c| c.in_key).collect()
    }

    /// The attributes a guest sees (hidden ones left out).
    pub fn visible(&self) -> Vec<String> {
        self.columns.iter().filter(|c| !c.hidden()).map(|c| c.name.clone()).collect()
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// `"schema"."table"`, for messages.
    pub fn qualified(&self) -> String {
        self.table.qualified()
    }
}

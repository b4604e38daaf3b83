//! What several SQL entry points share, below `api/` (whose modules never import each other):
//! creating tables and jobs tables, the tier guard's permissions, cascading deletes, populate on
//! insert.

pub mod auto;
pub mod delete;
pub mod tables;
pub mod writes;

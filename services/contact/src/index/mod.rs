//! Derived lookup tables of contacts, kept in step by every write
//! (`store::after_write`): search terms and typed attribute values.

pub mod migration;

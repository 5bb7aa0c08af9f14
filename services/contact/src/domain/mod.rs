//! Contact rules: validation and normalisation, field masks, names. Pure functions,
//! no I/O.

pub mod mask;
pub mod names;
pub mod validate;

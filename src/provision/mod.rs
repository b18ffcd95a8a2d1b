//! The test's own database: made (a prepared clone, a clone, or an empty
//! database or schema), handed out and dropped.

pub(crate) mod acquire;
pub(crate) mod admin;
pub(crate) mod budget;
pub(crate) mod clones;
pub(crate) mod database;
pub(crate) mod janitor;
pub(crate) mod template;
pub(crate) mod worker;

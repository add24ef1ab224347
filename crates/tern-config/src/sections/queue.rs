//! `[queue]`. Its keys arrive with the capability that uses them; until then the section takes no keys, and any
//! key given is reported as unknown.

use serde::{Deserialize, Serialize};

/// The `[queue]` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {}

impl QueueConfig {
    /// Checks ranges serde cannot express; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}

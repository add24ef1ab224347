//! Configuration errors. Each names the file and, where there is one, the key.

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// A key is unknown, or its value is of the wrong type or out of range.
    #[error("config file {path}: key `{key}`{from}: {message}", from = env_note(.env_var))]
    Key {
        /// The file.
        path: String,
        /// The dotted key, e.g. `ingest.max_recipients`.
        key: String,
        /// The environment variable that set the value, when one did.
        env_var: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// An environment variable has the `TERN_..__..` shape but names no key.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
}

fn env_note(var: &Option<String>) -> String {
    var.as_ref().map(|v| format!(" (set by {v})")).unwrap_or_default()
}

//! Reading the file, applying environment overrides, and turning serde's errors into ones that name the key.

use std::collections::HashMap;
use std::path::Path;

use crate::{Config, ConfigError, env};

pub(crate) fn load_file(
    path: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: origin.clone(),
        source,
    })?;
    load_str(&text, &origin, vars)
}

pub(crate) fn load_str(
    text: &str,
    origin: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
        path: origin.to_string(),
        message: one_line(&e),
    })?;
    let mut set_by: HashMap<String, String> = HashMap::new();
    for o in env::overrides(vars) {
        apply(&mut table, &o)?;
        set_by.insert(o.path.join("."), o.var);
    }

    let key_error = |key: String, message: String| {
        let env_var = set_by
            .iter()
            .filter(|(k, _)| {
                key == **k || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
            })
            .map(|(_, v)| v.clone())
            .next();
        ConfigError::Key {
            path: origin.to_string(),
            key,
            env_var,
            message,
        }
    };

    let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let mut key = e.path().to_string();
        let mut message = e.inner().to_string();
        // serde reports an unknown key at its parent; name the key itself.
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some((field, tail)) = rest.split_once('`')
        {
            if key == "." {
                key = field.to_string();
            } else if !key.ends_with(&format!(".{field}")) && key != field {
                key = format!("{key}.{field}");
            }
            message = format!("unknown key{tail}");
        }
        // The TOML deserializer appends " in `<key>`"; the key is already named.
        if let Some(idx) = message.rfind(" in `") {
            message.truncate(idx);
        }
        key_error(key, one_line(&message))
    })?;
    config
        .validate()
        .map_err(|(key, message)| key_error(key, message))?;
    Ok(config)
}

fn apply(table: &mut toml::Table, o: &env::Override) -> Result<(), ConfigError> {
    let Some((last, parents)) = o.path.split_last() else {
        return Err(ConfigError::Env {
            var: o.var.clone(),
            message: "names no key".into(),
        });
    };
    if o.path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var: o.var.clone(),
            message: "has an empty section or key name (expected TERN_<SECTION>__<KEY>)".into(),
        });
    }
    let mut here = table;
    for part in parents {
        let entry = here
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::Env {
                    var: o.var.clone(),
                    message: format!("`{part}` is not a table, so it has no key `{last}`"),
                });
            }
        };
    }
    here.insert(last.clone(), o.value.clone());
    Ok(())
}

fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

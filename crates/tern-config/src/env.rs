//! Environment overrides.
//!
//! The rule: a variable named `TERN_<SECTION>__<KEY>` sets `<key>` in `[<section>]`. The section and key are
//! the variable's parts lower-cased; a further `__` goes one table deeper (`TERN_A__B__C` sets `a.b.c`). Names
//! without `__` (such as `TERN_SERVER`, read by `ternctl`) are not configuration and are ignored.
//!
//! The value is read as a TOML value when it is one (`100`, `true`, `"text"`, `["a", "b"]`), and as a plain
//! string otherwise (`redis://host:6379`, `5m`). Quote a string that would read as another type:
//! `TERN_INGEST__HOSTNAME='"true"'`.

/// One override: the dotted key it sets, the variable it came from and the value.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    /// The key path, e.g. `["ingest", "max_recipients"]`.
    pub path: Vec<String>,
    /// The variable's name.
    pub var: String,
    /// The value, already read as TOML.
    pub value: toml::Value,
}

/// The prefix every override variable starts with.
pub const PREFIX: &str = "TERN_";

/// Picks the overrides out of an environment, in a stable (sorted) order.
pub fn overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
    let mut out: Vec<Override> = vars
        .into_iter()
        .filter_map(|(var, raw)| {
            let rest = var.strip_prefix(PREFIX)?;
            if !rest.contains("__") {
                return None;
            }
            let path = rest.split("__").map(str::to_ascii_lowercase).collect();
            Some(Override {
                path,
                value: parse_value(&raw),
                var,
            })
        })
        .collect();
    out.sort_by(|a, b| a.var.cmp(&b.var));
    out
}

/// Reads a variable's text as a TOML value, falling back to a string.
pub fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) if raw.trim() == raw && !raw.contains('\n') => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        _ => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn only_double_underscore_names_are_overrides() {
        let o = overrides(vars(&[
            ("TERN_SERVER", "x"),
            ("PATH", "/bin"),
            ("TERN_INGEST__MAX_RECIPIENTS", "5"),
        ]));
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].path, vec!["ingest", "max_recipients"]);
        assert_eq!(o[0].value, toml::Value::Integer(5));
    }

    #[test]
    fn values_read_as_toml_or_fall_back_to_strings() {
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("\"true\""), toml::Value::String("true".into()));
        assert_eq!(
            parse_value("redis://h:1/0"),
            toml::Value::String("redis://h:1/0".into())
        );
        assert_eq!(parse_value("5m"), toml::Value::String("5m".into()));
        assert_eq!(
            parse_value(r#"["a","b"]"#),
            toml::Value::Array(vec![
                toml::Value::String("a".into()),
                toml::Value::String("b".into())
            ])
        );
        assert_eq!(parse_value("x = 1"), toml::Value::String("x = 1".into()));
    }

    #[test]
    fn deeper_keys_split_on_each_double_underscore() {
        let o = overrides(vars(&[("TERN_TELEMETRY__OTLP__ENDPOINT", "http://x")]));
        assert_eq!(o[0].path, vec!["telemetry", "otlp", "endpoint"]);
    }
}

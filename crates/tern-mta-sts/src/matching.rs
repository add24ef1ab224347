//! MX host matching (RFC 8461 §4.1).
//!
//! A pattern is a host name, matched exactly, or `*.` and a domain, which matches a host with exactly one
//! more label on the left: `*.example.test` matches `mx1.example.test` but neither `example.test` nor
//! `a.b.example.test`. Comparison ignores ASCII case and trailing dots (MX names from DNS often end with
//! one). Host names are compared as A-labels, as RFC 8461 requires of patterns.

/// Whether the MX host name `host` matches `pattern`.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let host = host.trim_end_matches('.');
    if host.is_empty() || host.contains('*') {
        return false;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => match host.split_once('.') {
            Some((label, rest)) => {
                !label.is_empty() && !suffix.is_empty() && rest.eq_ignore_ascii_case(suffix)
            }
            None => false,
        },
        None => !pattern.is_empty() && pattern.eq_ignore_ascii_case(host),
    }
}

/// Whether `host` matches any of `patterns`.
pub fn matches_any<I, S>(patterns: I, host: &str) -> bool
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    patterns.into_iter().any(|p| mx_matches(p.as_ref(), host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Case {
        mx: String,
        pattern: String,
        #[serde(rename = "match")]
        matches: bool,
        why: Option<String>,
    }

    #[test]
    fn every_match_vector_matches_as_the_vector_says() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/vectors/mta_sts_match.json"
        );
        let text = std::fs::read_to_string(path).expect("the vectors file");
        let cases: Vec<Case> = serde_json::from_str(&text).expect("vectors JSON");
        assert!(!cases.is_empty());
        for c in cases {
            assert_eq!(
                mx_matches(&c.pattern, &c.mx),
                c.matches,
                "{} against {} ({})",
                c.mx,
                c.pattern,
                c.why.as_deref().unwrap_or("")
            );
        }
    }

    #[test]
    fn wildcards_ignore_case_and_trailing_dots_on_both_sides() {
        assert!(mx_matches("*.Example.Test.", "MX1.example.test."));
        assert!(mx_matches("mail.example.test.", "mail.example.test"));
    }

    #[test]
    fn a_wildcard_needs_a_non_empty_left_label() {
        assert!(!mx_matches("*.example.test", ".example.test"));
        assert!(!mx_matches("*.example.test", "*.example.test"));
        assert!(!mx_matches("*.", "a"));
        assert!(!mx_matches("", ""));
        assert!(!mx_matches("a.test", ""));
    }

    #[test]
    fn a_host_matches_if_any_pattern_does() {
        let patterns = ["mail.a.test", "*.b.test"];
        assert!(matches_any(patterns, "x.b.test"));
        assert!(matches_any(patterns, "mail.a.test"));
        assert!(!matches_any(patterns, "mail.c.test"));
        assert!(!matches_any(Vec::<String>::new(), "mail.c.test"));
    }
}

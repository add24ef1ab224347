//! EHLO capabilities (RFC 5321 section 4.1.1.1): reading them from a
//! server's EHLO reply on the client side, and producing the reply on the
//! server side.
//!
//! `SIZE` (RFC 1870): [`Capabilities::size`] is `None` when `SIZE` is not
//! advertised, `Some(0)` when it is advertised without a number or with `0`
//! (both mean "no fixed maximum"), and `Some(n)` for a limit of `n` octets.
//! An unparsable number is treated like no number.

use crate::reply::Reply;

/// The extensions a server advertised.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Capabilities {
    /// `SIZE`; see the module docs.
    pub size: Option<u64>,
    /// `PIPELINING` (RFC 2920).
    pub pipelining: bool,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// `AUTH` mechanisms, upper-cased (RFC 4954; the old `AUTH=` form is
    /// merged in).
    pub auth: Vec<String>,
    /// `8BITMIME` (RFC 6152).
    pub eight_bit_mime: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `CHUNKING` (RFC 3030).
    pub chunking: bool,
    /// `BINARYMIME` (RFC 3030).
    pub binarymime: bool,
    /// `DSN` (RFC 3461).
    pub dsn: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    pub enhanced_status_codes: bool,
    /// `REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
    /// Other keywords, upper-cased, with their parameter text if any.
    pub other: Vec<(String, Option<String>)>,
}

impl Capabilities {
    /// Reads the capabilities from an EHLO reply. The first line (the
    /// server's domain and greeting) is skipped; keywords are
    /// case-insensitive. A non-2xx reply has no capabilities.
    pub fn from_ehlo_reply(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        if !reply.is_positive() {
            return caps;
        }
        for line in reply.lines.iter().skip(1) {
            let line = line.trim();
            let (kw, param) = match line.split_once([' ', '=']) {
                Some((k, p)) => (k, Some(p.trim())),
                None => (line, None),
            };
            if kw.is_empty() {
                continue;
            }
            let kw = kw.to_ascii_uppercase();
            match kw.as_str() {
                "SIZE" => {
                    caps.size = Some(param.and_then(|p| p.parse().ok()).unwrap_or(0));
                }
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "AUTH" => {
                    for m in param.unwrap_or("").split([' ', '=']).filter(|m| !m.is_empty()) {
                        let m = m.to_ascii_uppercase();
                        if !caps.auth.contains(&m) {
                            caps.auth.push(m);
                        }
                    }
                }
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "CHUNKING" => caps.chunking = true,
                "BINARYMIME" => caps.binarymime = true,
                "DSN" => caps.dsn = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "REQUIRETLS" => caps.requiretls = true,
                _ => caps.other.push((kw, param.map(str::to_owned))),
            }
        }
        caps
    }

    /// True if `mechanism` is among the advertised AUTH mechanisms
    /// (case-insensitive).
    pub fn supports_auth(&self, mechanism: &str) -> bool {
        self.auth.iter().any(|m| m.eq_ignore_ascii_case(mechanism))
    }

    /// True if `keyword` was advertised (case-insensitive), known or not.
    pub fn has(&self, keyword: &str) -> bool {
        let k = keyword.to_ascii_uppercase();
        match k.as_str() {
            "SIZE" => self.size.is_some(),
            "PIPELINING" => self.pipelining,
            "STARTTLS" => self.starttls,
            "AUTH" => !self.auth.is_empty(),
            "8BITMIME" => self.eight_bit_mime,
            "SMTPUTF8" => self.smtputf8,
            "CHUNKING" => self.chunking,
            "BINARYMIME" => self.binarymime,
            "DSN" => self.dsn,
            "ENHANCEDSTATUSCODES" => self.enhanced_status_codes,
            "REQUIRETLS" => self.requiretls,
            _ => self.other.iter().any(|(o, _)| *o == k),
        }
    }

    /// The keyword lines to advertise, in a conventional order.
    pub fn to_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut flag = |on: bool, s: &str| {
            if on {
                lines.push(s.to_owned());
            }
        };
        flag(self.pipelining, "PIPELINING");
        if let Some(n) = self.size {
            lines.push(if n == 0 {
                "SIZE".to_owned()
            } else {
                format!("SIZE {n}")
            });
        }
        let mut flag = |on: bool, s: &str| {
            if on {
                lines.push(s.to_owned());
            }
        };
        flag(self.starttls, "STARTTLS");
        flag(self.enhanced_status_codes, "ENHANCEDSTATUSCODES");
        flag(self.eight_bit_mime, "8BITMIME");
        flag(self.binarymime, "BINARYMIME");
        flag(self.chunking, "CHUNKING");
        flag(self.dsn, "DSN");
        flag(self.smtputf8, "SMTPUTF8");
        flag(self.requiretls, "REQUIRETLS");
        if !self.auth.is_empty() {
            lines.push(format!("AUTH {}", self.auth.join(" ")));
        }
        for (k, v) in &self.other {
            lines.push(match v {
                Some(v) => format!("{k} {v}"),
                None => k.clone(),
            });
        }
        lines
    }

    /// The server's EHLO reply: `250-greeting` then one line per keyword.
    pub fn to_ehlo_reply(&self, greeting: &str) -> Reply {
        let mut r = Reply::new(250, None, greeting);
        r.lines.extend(self.to_lines());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::ReplyParser;

    fn caps(wire: &[u8]) -> Capabilities {
        let mut p = ReplyParser::new();
        p.push(wire);
        Capabilities::from_ehlo_reply(&p.next_reply().unwrap().unwrap())
    }

    #[test]
    fn typical_ehlo_reply_is_understood() {
        let c = caps(
            b"250-mx.example.test Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n\
              250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n\
              250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n\
              250-BINARYMIME\r\n250-REQUIRETLS\r\n250 X-EXTRA foo bar\r\n",
        );
        assert_eq!(c.size, Some(10_240_000));
        assert!(c.pipelining && c.starttls && c.enhanced_status_codes && c.eight_bit_mime);
        assert!(c.dsn && c.smtputf8 && c.chunking && c.binarymime && c.requiretls);
        assert_eq!(c.auth, vec!["PLAIN".to_owned(), "LOGIN".to_owned()]);
        assert_eq!(c.other, vec![("X-EXTRA".to_owned(), Some("foo bar".to_owned()))]);
    }

    #[test]
    fn greeting_line_is_not_a_keyword() {
        let c = caps(b"250-PIPELINING.example.test\r\n250 8BITMIME\r\n");
        assert!(!c.pipelining);
        assert!(c.eight_bit_mime);
        assert!(c.other.is_empty());
    }

    #[test]
    fn keywords_are_case_insensitive() {
        let c = caps(b"250-mx\r\n250-pipelining\r\n250 auth plain\r\n");
        assert!(c.pipelining);
        assert!(c.supports_auth("PLAIN"));
    }

    #[test]
    fn size_without_number_or_zero_means_no_fixed_limit() {
        assert_eq!(caps(b"250-mx\r\n250 SIZE\r\n").size, Some(0));
        assert_eq!(caps(b"250-mx\r\n250 SIZE 0\r\n").size, Some(0));
        assert_eq!(caps(b"250-mx\r\n250 8BITMIME\r\n").size, None);
    }

    #[test]
    fn old_style_auth_equals_is_merged() {
        let c = caps(b"250-mx\r\n250-AUTH LOGIN PLAIN\r\n250 AUTH=LOGIN\r\n");
        assert_eq!(c.auth, vec!["LOGIN".to_owned(), "PLAIN".to_owned()]);
    }

    #[test]
    fn non_positive_reply_has_no_capabilities() {
        let r = Reply::new(550, None, "go away").line("PIPELINING");
        assert_eq!(Capabilities::from_ehlo_reply(&r), Capabilities::default());
    }

    #[test]
    fn ehlo_reply_round_trips_through_capabilities() {
        let c = Capabilities {
            size: Some(1000),
            pipelining: true,
            auth: vec!["PLAIN".into()],
            chunking: true,
            other: vec![("X-FOO".into(), None)],
            ..Capabilities::default()
        };
        let r = c.to_ehlo_reply("mx.example.test");
        assert_eq!(r.lines[0], "mx.example.test");
        assert_eq!(Capabilities::from_ehlo_reply(&r), c);
        assert!(c.has("x-foo") && c.has("chunking") && !c.has("DSN"));
    }
}

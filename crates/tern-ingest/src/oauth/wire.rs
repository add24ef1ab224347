//! The client messages and server error challenges of AUTH XOAUTH2 (Google's format) and OAUTHBEARER
//! (RFC 7628), after base64 decoding. Pure functions.
//!
//! - XOAUTH2: `user=<user>^Aauth=Bearer <token>^A^A`.
//! - OAUTHBEARER: `<gs2-header>^A<key>=<value>^A...^A`, the GS2 header being `n,a=<authzid>,` (or `n,,`, or
//!   `y,...`); only `auth` matters here, `host` and `port` are ignored. Channel binding (`p=`) is refused:
//!   RFC 7628 defines none for OAUTHBEARER.

/// The two OAuth SASL mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OauthMechanism {
    /// Google's `XOAUTH2`.
    Xoauth2,
    /// `OAUTHBEARER` (RFC 7628).
    OauthBearer,
}

impl OauthMechanism {
    /// The mechanism for an (upper-case) AUTH mechanism name, if it is one of the two.
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("XOAUTH2") {
            Some(OauthMechanism::Xoauth2)
        } else if name.eq_ignore_ascii_case("OAUTHBEARER") {
            Some(OauthMechanism::OauthBearer)
        } else {
            None
        }
    }

    /// The mechanism name as advertised.
    pub fn as_str(self) -> &'static str {
        match self {
            OauthMechanism::Xoauth2 => "XOAUTH2",
            OauthMechanism::OauthBearer => "OAUTHBEARER",
        }
    }
}

/// What the client sent: the user it claims to be (XOAUTH2's `user=`, OAUTHBEARER's `a=`), and the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// The user named by the client, if any (compared with the token's user claim).
    pub authzid: Option<String>,
    /// The bearer token (never logged).
    pub token: String,
}

impl std::fmt::Debug for ClientResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientResponse")
            .field("authzid", &self.authzid)
            .finish_non_exhaustive()
    }
}

/// Parses a decoded client response of `mechanism`; `None`: it is not that mechanism's shape.
pub fn parse_response(mechanism: OauthMechanism, msg: &[u8]) -> Option<ClientResponse> {
    let msg = std::str::from_utf8(msg).ok()?;
    match mechanism {
        OauthMechanism::Xoauth2 => parse_xoauth2(msg),
        OauthMechanism::OauthBearer => parse_oauthbearer(msg),
    }
}

/// The token of an `auth` value: `Bearer <token>` (the scheme is case-insensitive, RFC 7235).
fn bearer(value: &str) -> Option<String> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("Bearer") && !token.is_empty() && !token.contains(' '))
        .then(|| token.to_owned())
}

/// `key=value` pairs separated by `^A`, ended by an empty pair (`^A^A`).
fn kvpairs(text: &str) -> Option<Vec<(&str, &str)>> {
    let body = text.strip_suffix("\x01\x01")?;
    body.split('\x01')
        .map(|kv| kv.split_once('='))
        .collect::<Option<Vec<_>>>()
}

fn parse_xoauth2(msg: &str) -> Option<ClientResponse> {
    let pairs = kvpairs(msg)?;
    let mut user = None;
    let mut token = None;
    for (k, v) in pairs {
        match k {
            "user" => user = Some(v.to_owned()),
            "auth" => token = Some(bearer(v)?),
            _ => {}
        }
    }
    Some(ClientResponse {
        authzid: user.filter(|u| !u.is_empty()),
        token: token?,
    })
}

fn parse_oauthbearer(msg: &str) -> Option<ClientResponse> {
    let (gs2, rest) = msg.split_once('\x01')?;
    // gs2-header = gs2-cbind-flag "," [ gs2-authzid ] "," (RFC 5801); the kvpairs follow its `^A`.
    let mut parts = gs2.splitn(3, ',');
    let flag = parts.next()?;
    let authzid = parts.next()?;
    if !parts.next()?.is_empty() || !(flag == "n" || flag == "y") {
        return None;
    }
    let authzid = match authzid {
        "" => None,
        a => Some(decode_saslname(a.strip_prefix("a=")?)?),
    };
    let mut token = None;
    for (k, v) in kvpairs(rest)? {
        if k == "auth" {
            token = Some(bearer(v)?);
        }
    }
    Some(ClientResponse {
        authzid,
        token: token?,
    })
}

/// RFC 5801's saslname: `=2C` is `,`, `=3D` is `=`, any other `=` is malformed.
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

/// The JSON of the error challenge sent before `535` (RFC 7628 3.2.2 for OAUTHBEARER, Google's form for
/// XOAUTH2).
pub fn error_challenge(
    mechanism: OauthMechanism,
    scope: Option<&str>,
    openid_configuration: Option<&str>,
) -> String {
    let mut obj = serde_json::Map::new();
    match mechanism {
        OauthMechanism::OauthBearer => {
            obj.insert("status".into(), "invalid_token".into());
            if let Some(s) = scope {
                obj.insert("scope".into(), s.into());
            }
            if let Some(c) = openid_configuration {
                obj.insert("openid-configuration".into(), c.into());
            }
        }
        OauthMechanism::Xoauth2 => {
            obj.insert("status".into(), "401".into());
            obj.insert("schemes".into(), "Bearer".into());
            if let Some(s) = scope {
                obj.insert("scope".into(), s.into());
            }
        }
    }
    serde_json::Value::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(m: OauthMechanism, s: &str) -> Option<ClientResponse> {
        parse_response(m, s.as_bytes())
    }

    #[test]
    fn xoauth2_responses_parse() {
        let r = parse(
            OauthMechanism::Xoauth2,
            "user=a@b.test\x01auth=Bearer tok.en\x01\x01",
        )
        .unwrap();
        assert_eq!(r.authzid.as_deref(), Some("a@b.test"));
        assert_eq!(r.token, "tok.en");
        let r = parse(OauthMechanism::Xoauth2, "user=\x01auth=bearer t\x01\x01").unwrap();
        assert_eq!(r.authzid, None);
        for bad in [
            "user=a\x01auth=Bearer t\x01",
            "user=a\x01\x01",
            "user=a\x01auth=Basic t\x01\x01",
            "user=a\x01auth=Bearer \x01\x01",
            "garbage",
        ] {
            assert!(parse(OauthMechanism::Xoauth2, bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn oauthbearer_responses_parse() {
        let r = parse(
            OauthMechanism::OauthBearer,
            "n,a=user=3Dx=2Cy@b.test,\x01host=mx\x01port=587\x01auth=Bearer t\x01\x01",
        )
        .unwrap();
        assert_eq!(r.authzid.as_deref(), Some("user=x,y@b.test"));
        assert_eq!(r.token, "t");
        let r = parse(OauthMechanism::OauthBearer, "n,,\x01auth=Bearer t\x01\x01").unwrap();
        assert_eq!(r.authzid, None);
        for bad in [
            "p=tls-unique,,\x01auth=Bearer t\x01\x01",
            "n,a=x=41,\x01auth=Bearer t\x01\x01",
            "n,b=x,\x01auth=Bearer t\x01\x01",
            "n,,\x01host=mx\x01\x01",
            "n,,\x01auth=Bearer t\x01",
            "\x01",
        ] {
            assert!(parse(OauthMechanism::OauthBearer, bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn error_challenges_are_json() {
        let j: serde_json::Value = serde_json::from_str(&error_challenge(
            OauthMechanism::OauthBearer,
            Some("mail"),
            Some("https://idp/.well-known/openid-configuration"),
        ))
        .unwrap();
        assert_eq!(j["status"], "invalid_token");
        assert_eq!(j["scope"], "mail");
        let j: serde_json::Value =
            serde_json::from_str(&error_challenge(OauthMechanism::Xoauth2, None, None)).unwrap();
        assert_eq!(j["status"], "401");
        assert_eq!(j["schemes"], "Bearer");
    }
}

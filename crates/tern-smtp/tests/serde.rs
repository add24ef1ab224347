//! The `serde` feature: string forms for mailboxes and enhanced codes, and
//! round trips for the other data types.
#![cfg(feature = "serde")]

use tern_smtp::{
    Body, Capabilities, Domain, EnhancedCode, MailParams, Mailbox, Notify, OriginalRecipient, RcptParams,
    Reply, ReversePath,
};

#[test]
fn mailbox_serializes_as_its_string_form() {
    let m: Mailbox = "\"quoted local\"@example.test".parse().unwrap();
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(json, r#""\"quoted local\"@example.test""#);
    assert_eq!(serde_json::from_str::<Mailbox>(&json).unwrap(), m);
}

#[test]
fn mailbox_deserializes_utf8_by_parsing() {
    let m: Mailbox = serde_json::from_str(r#""用户@例子.测试""#).unwrap();
    assert_eq!(m.local_part, "用户");
    assert_eq!(m.domain, Domain::Name("例子.测试".into()));
}

#[test]
fn invalid_mailbox_string_fails_to_deserialize() {
    assert!(serde_json::from_str::<Mailbox>(r#""no-at-sign""#).is_err());
    assert!(serde_json::from_str::<Mailbox>(r#""a@b..c""#).is_err());
}

#[test]
fn enhanced_code_serializes_as_dotted_string() {
    let c = EnhancedCode::new(5, 1, 1);
    assert_eq!(serde_json::to_string(&c).unwrap(), r#""5.1.1""#);
    assert_eq!(serde_json::from_str::<EnhancedCode>(r#""5.1.1""#).unwrap(), c);
    assert!(serde_json::from_str::<EnhancedCode>(r#""9.9.9""#).is_err());
}

#[test]
fn params_and_paths_round_trip_through_json() {
    let params = MailParams {
        size: Some(10),
        body: Some(Body::BinaryMime),
        smtputf8: true,
        envid: Some("id 1".into()),
        ..MailParams::default()
    };
    let rcpt = RcptParams {
        notify: Some(Notify::NEVER),
        orcpt: Some(OriginalRecipient::rfc822("a@b.test")),
    };
    let from = ReversePath::Mailbox("a@[192.0.2.1]".parse().unwrap());
    let json = serde_json::to_string(&(&params, &rcpt, &from, ReversePath::Null)).unwrap();
    let back: (MailParams, RcptParams, ReversePath, ReversePath) = serde_json::from_str(&json).unwrap();
    assert_eq!(back, (params, rcpt, from, ReversePath::Null));
}

#[test]
fn reply_and_capabilities_round_trip_through_json() {
    let r = Reply::new(250, "2.0.0", "ok").line("more");
    let back: Reply = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(back, r);
    let c = Capabilities {
        size: Some(0),
        auth: vec!["PLAIN".into()],
        ..Capabilities::default()
    };
    let back: Capabilities = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

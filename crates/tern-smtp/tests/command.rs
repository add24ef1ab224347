//! Focused tests of command parsing and the replies for each error.

use tern_smtp::{
    AuthMechanism, Body, Command, CommandError, Domain, Notify, ParamError, ParseContext, PathError, Reply,
    ReversePath, parse_command, parse_command_with,
};

fn ok(line: &str) -> Command {
    parse_command(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn err(line: &[u8]) -> CommandError {
    match parse_command(line) {
        Ok(c) => panic!("{line:?} parsed as {c:?}"),
        Err(e) => e,
    }
}

fn reply_of(line: &[u8]) -> String {
    err(line).reply().to_string()
}

fn code_of(line: &[u8]) -> (u16, String) {
    let r: Reply = err(line).reply();
    (r.code, r.enhanced.map(|e| e.to_string()).unwrap_or_default())
}

#[test]
fn verbs_are_case_insensitive() {
    assert_eq!(ok("quit"), Command::Quit);
    assert_eq!(ok("QuIt"), Command::Quit);
    assert_eq!(ok("rset"), Command::Rset);
    assert_eq!(ok("data"), Command::Data);
    assert_eq!(ok("StartTLS"), Command::StartTls);
}

#[test]
fn ehlo_and_helo_keep_their_argument() {
    assert_eq!(
        ok("EHLO client.example.test"),
        Command::Ehlo("client.example.test".into())
    );
    assert_eq!(ok("helo [192.0.2.1]"), Command::Helo("[192.0.2.1]".into()));
}

#[test]
fn ehlo_without_argument_gets_501_5_5_4() {
    assert_eq!(code_of(b"EHLO"), (501, "5.5.4".into()));
    assert_eq!(code_of(b"EHLO   "), (501, "5.5.4".into()));
}

#[test]
fn ehlo_with_non_ascii_argument_is_rejected() {
    assert_eq!(code_of("EHLO 例子.测试".as_bytes()), (501, "5.5.4".into()));
}

#[test]
fn unknown_verb_gets_500_5_5_1() {
    assert_eq!(reply_of(b"FROB x"), "500 5.5.1 Command unrecognized");
}

#[test]
fn empty_line_gets_500_5_5_2() {
    assert_eq!(code_of(b""), (500, "5.5.2".into()));
}

#[test]
fn line_over_512_octets_gets_500_5_5_2() {
    let line = format!("NOOP {}", "x".repeat(506));
    assert_eq!(line.len() + 2, 513);
    assert_eq!(reply_of(line.as_bytes()), "500 5.5.2 Line too long");
    let fits = format!("NOOP {}", "x".repeat(505));
    assert_eq!(parse_command(fits.as_bytes()), Ok(Command::Noop));
}

#[test]
fn mail_line_over_1012_octets_gets_500_5_5_2() {
    let envid = "e".repeat(100);
    let auth = "a".repeat(900);
    let line = format!(
        "MAIL FROM:<{}@example.test> ENVID={envid} AUTH={auth}",
        "l".repeat(60)
    );
    assert!(line.len() + 2 > 1012);
    assert_eq!(code_of(line.as_bytes()), (500, "5.5.2".into()));
}

#[test]
fn rcpt_with_notify_and_a_500_character_orcpt_is_not_too_long() {
    let local = "l".repeat(64);
    let domain = format!("{}.test", "d".repeat(60));
    let head = format!("RCPT TO:<{local}@{domain}> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=");
    let orcpt = format!("rfc822;{}", "o".repeat(493));
    assert_eq!(orcpt.len(), 500);
    let line = format!("{head}{orcpt}");
    assert!(line.len() + 2 > 512, "{}", line.len());
    assert!(
        matches!(parse_command(line.as_bytes()), Ok(Command::Rcpt { .. })),
        "{line}"
    );
    let pad = "RCPT TO:<a@b.test> X-PAD=";
    let over = format!("{pad}{}", "p".repeat(1011 - pad.len()));
    assert_eq!(over.len() + 2, 1013);
    assert_eq!(code_of(over.as_bytes()), (500, "5.5.2".into()));
    let fits = &over[..over.len() - 1];
    assert_ne!(
        code_of(fits.as_bytes()).0,
        500,
        "1012 octets are within the limit"
    );
}

#[test]
fn cr_lf_or_nul_anywhere_gets_501_5_5_2() {
    for line in [&b"NOOP a\rb"[..], b"NOOP a\nb", b"NOOP a\0b", b"QUIT\r"] {
        assert_eq!(err(line), CommandError::ControlChar, "{line:?}");
        assert_eq!(code_of(line), (501, "5.5.2".into()));
    }
}

#[test]
fn invalid_utf8_gets_501_5_5_2() {
    assert_eq!(err(b"MAIL FROM:<\xff@example.test>"), CommandError::InvalidUtf8);
}

#[test]
fn mail_from_parses_path_and_params() {
    let c = ok("MAIL FROM:<a@example.test> SIZE=100 BODY=8BITMIME");
    let Command::Mail { from, params } = c else {
        panic!("not MAIL: {c:?}");
    };
    assert_eq!(from.to_string(), "<a@example.test>");
    assert_eq!(params.size, Some(100));
    assert_eq!(params.body, Some(Body::EightBitMime));
}

#[test]
fn mail_from_null_path_is_accepted() {
    let c = ok("mail from:<>");
    assert!(matches!(
        c,
        Command::Mail {
            from: ReversePath::Null,
            ..
        }
    ));
}

#[test]
fn mail_from_tolerates_space_after_colon() {
    assert!(matches!(ok("MAIL FROM: <a@example.test>"), Command::Mail { .. }));
}

#[test]
fn mail_without_from_keyword_gets_501_5_5_2() {
    assert_eq!(code_of(b"MAIL <a@example.test>"), (501, "5.5.2".into()));
    assert_eq!(code_of(b"MAIL"), (501, "5.5.2".into()));
}

#[test]
fn mail_from_without_brackets_gets_501_5_1_7() {
    assert_eq!(code_of(b"MAIL FROM:a@example.test"), (501, "5.1.7".into()));
}

#[test]
fn mail_from_bad_address_gets_501_5_1_7_with_reason() {
    let r = reply_of(b"MAIL FROM:<a..b@example.test>");
    assert!(r.starts_with("501 5.1.7 Bad sender address syntax"), "{r}");
}

#[test]
fn rcpt_bad_address_gets_501_5_1_3() {
    assert_eq!(code_of(b"RCPT TO:<a@-x.test>"), (501, "5.1.3".into()));
    assert_eq!(code_of(b"RCPT TO:<a@>"), (501, "5.1.3".into()));
}

#[test]
fn rcpt_to_null_path_gets_501_5_1_3() {
    assert_eq!(
        err(b"RCPT TO:<>"),
        CommandError::BadRecipient(PathError::NullNotAllowed)
    );
    assert_eq!(code_of(b"RCPT TO:<>"), (501, "5.1.3".into()));
}

#[test]
fn path_glued_to_params_gets_501_5_5_2() {
    assert_eq!(
        code_of(b"MAIL FROM:<a@example.test>SIZE=1"),
        (501, "5.5.2".into())
    );
}

#[test]
fn quoted_local_part_with_angle_bracket_and_space_is_parsed() {
    let c = ok(r#"RCPT TO:<"a> b"@example.test> NOTIFY=NEVER"#);
    let Command::Rcpt { to, params } = c else {
        panic!("not RCPT: {c:?}");
    };
    assert_eq!(to.local_part, r#""a> b""#);
    assert_eq!(params.notify, Some(Notify::NEVER));
}

#[test]
fn source_route_in_rcpt_is_dropped() {
    let c = ok("RCPT TO:<@relay.test:u@example.test>");
    assert!(matches!(c, Command::Rcpt { ref to, .. } if to.to_string() == "u@example.test"));
}

#[test]
fn rcpt_with_unknown_parameter_gets_555() {
    assert_eq!(
        reply_of(b"RCPT TO:<a@example.test> X-FOO=1"),
        "555 5.5.4 Unsupported parameter: unsupported parameter X-FOO"
    );
}

#[test]
fn mail_with_unknown_parameter_gets_555_5_5_4() {
    assert_eq!(
        code_of(b"MAIL FROM:<a@example.test> XYZZY"),
        (555, "5.5.4".into())
    );
}

#[test]
fn mail_only_parameter_on_rcpt_gets_555() {
    assert_eq!(
        code_of(b"RCPT TO:<a@example.test> SIZE=10"),
        (555, "5.5.4".into())
    );
}

#[test]
fn duplicate_parameter_gets_501_5_5_4() {
    assert_eq!(
        err(b"MAIL FROM:<a@example.test> SIZE=1 size=2"),
        CommandError::Param(ParamError::Duplicate("SIZE".into()))
    );
    assert_eq!(
        code_of(b"MAIL FROM:<a@example.test> SIZE=1 size=2"),
        (501, "5.5.4".into())
    );
    assert_eq!(
        code_of(b"RCPT TO:<a@example.test> NOTIFY=NEVER NOTIFY=DELAY"),
        (501, "5.5.4".into())
    );
}

#[test]
fn bad_parameter_value_gets_501_5_5_4() {
    assert_eq!(
        code_of(b"MAIL FROM:<a@example.test> BODY=9BIT"),
        (501, "5.5.4".into())
    );
    assert_eq!(
        code_of(b"RCPT TO:<a@example.test> NOTIFY=NEVER,DELAY"),
        (501, "5.5.4".into())
    );
    assert_eq!(
        code_of(b"RCPT TO:<a@example.test> ORCPT=nosemicolon"),
        (501, "5.5.4".into())
    );
}

#[test]
fn parameter_keywords_are_case_insensitive() {
    let c = ok("MAIL FROM:<a@example.test> smtputf8 requiretls ret=full");
    let Command::Mail { params, .. } = c else {
        panic!("not MAIL");
    };
    assert!(params.smtputf8 && params.requiretls);
}

#[test]
fn utf8_sender_with_smtputf8_param_is_accepted() {
    let c = ok("MAIL FROM:<用户@例子.测试> SMTPUTF8");
    let Command::Mail { from, .. } = c else {
        panic!("not MAIL");
    };
    assert_eq!(from.to_string(), "<用户@例子.测试>");
}

#[test]
fn utf8_sender_without_smtputf8_gets_553_5_6_7() {
    let line = "MAIL FROM:<用户@例子.测试>".as_bytes();
    assert_eq!(err(line), CommandError::NonAsciiAddress);
    assert_eq!(code_of(line), (553, "5.6.7".into()));
}

#[test]
fn utf8_recipient_needs_smtputf8_transaction() {
    let line = "RCPT TO:<ü@example.test>".as_bytes();
    assert_eq!(code_of(line), (553, "5.6.7".into()));
    let ctx = ParseContext::with_smtputf8(true);
    assert!(matches!(parse_command_with(line, &ctx), Ok(Command::Rcpt { .. })));
}

#[test]
fn postmaster_without_domain_uses_context_domain() {
    let ctx = ParseContext {
        smtputf8: false,
        postmaster_domain: Some("mx.example.test".into()),
    };
    let c = parse_command_with(b"RCPT TO:<PostMaster>", &ctx).unwrap();
    let Command::Rcpt { to, .. } = c else {
        panic!("not RCPT");
    };
    assert_eq!(to.to_string(), "postmaster@mx.example.test");
    assert_eq!(to.domain, Domain::Name("mx.example.test".into()));
}

#[test]
fn postmaster_without_domain_and_no_context_is_rejected() {
    assert_eq!(code_of(b"RCPT TO:<Postmaster>"), (501, "5.1.3".into()));
}

#[test]
fn data_with_argument_gets_501_5_5_4() {
    assert_eq!(code_of(b"DATA now"), (501, "5.5.4".into()));
    assert_eq!(code_of(b"QUIT please"), (501, "5.5.4".into()));
}

#[test]
fn trailing_spaces_are_ignored() {
    assert_eq!(ok("QUIT  "), Command::Quit);
    assert_eq!(ok("DATA "), Command::Data);
}

#[test]
fn noop_ignores_its_argument() {
    assert_eq!(ok("NOOP hello there"), Command::Noop);
}

#[test]
fn vrfy_requires_an_argument() {
    assert_eq!(ok("VRFY postmaster"), Command::Vrfy("postmaster".into()));
    assert_eq!(code_of(b"VRFY"), (501, "5.5.4".into()));
}

#[test]
fn help_argument_is_optional() {
    assert_eq!(ok("HELP"), Command::Help(None));
    assert_eq!(ok("HELP MAIL"), Command::Help(Some("MAIL".into())));
}

#[test]
fn bdat_parses_size_and_last() {
    assert_eq!(
        ok("BDAT 1000"),
        Command::Bdat {
            size: 1000,
            last: false
        }
    );
    assert_eq!(ok("bdat 0 last"), Command::Bdat { size: 0, last: true });
}

#[test]
fn bdat_with_bad_size_or_extra_word_gets_501_5_5_4() {
    for line in [
        &b"BDAT"[..],
        b"BDAT -1",
        b"BDAT 12x",
        b"BDAT 1 FIRST",
        b"BDAT 1 LAST x",
        b"BDAT 99999999999999999999",
    ] {
        assert_eq!(code_of(line), (501, "5.5.4".into()), "{line:?}");
    }
}

#[test]
fn auth_plain_with_initial_response() {
    assert_eq!(
        ok("AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
        Command::Auth {
            mechanism: AuthMechanism::Plain,
            initial_response: Some("AGFsaWNlAHNlY3JldA==".into())
        }
    );
}

#[test]
fn auth_initial_response_equals_means_empty() {
    assert_eq!(
        ok("auth login ="),
        Command::Auth {
            mechanism: AuthMechanism::Login,
            initial_response: Some(String::new())
        }
    );
}

#[test]
fn auth_without_initial_response_is_none() {
    assert_eq!(
        ok("AUTH LOGIN"),
        Command::Auth {
            mechanism: AuthMechanism::Login,
            initial_response: None
        }
    );
}

#[test]
fn auth_unknown_mechanism_gets_504_5_5_4() {
    assert_eq!(
        reply_of(b"AUTH CRAM-MD5"),
        "504 5.5.4 Unrecognized authentication type"
    );
    assert_eq!(
        err(b"AUTH cram-md5"),
        CommandError::UnknownAuthMechanism("CRAM-MD5".into())
    );
}

#[test]
fn auth_initial_response_that_is_not_base64_gets_501_5_5_2() {
    assert_eq!(code_of(b"AUTH PLAIN a*b"), (501, "5.5.2".into()));
}

#[test]
fn auth_without_mechanism_gets_501_5_5_4() {
    assert_eq!(code_of(b"AUTH"), (501, "5.5.4".into()));
}

#[test]
fn commands_display_in_wire_form_and_parse_back() {
    let lines = [
        "EHLO client.example.test",
        "MAIL FROM:<> RET=HDRS ENVID=x+2By",
        "MAIL FROM:<a@example.test> SIZE=5 BODY=BINARYMIME SMTPUTF8 AUTH=<> REQUIRETLS",
        "RCPT TO:<\"q a\"@[IPv6:2001:db8::1]> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;q+20a@x.test",
        "BDAT 10 LAST",
        "AUTH PLAIN =",
        "DATA",
        "QUIT",
        "HELP x",
    ];
    for line in lines {
        let c = ok(line);
        assert_eq!(c.to_string(), line);
        assert_eq!(c.to_bytes(), format!("{line}\r\n").into_bytes());
        assert_eq!(ok(&c.to_string()), c);
    }
}

#[test]
fn commands_written_into_one_buffer_follow_what_it_held() {
    let mut group = b"held data\r\n.\r\n".to_vec();
    for line in ["MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test>", "DATA"] {
        ok(line).write_wire(&mut group);
    }
    assert_eq!(
        group,
        b"held data\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
    );
}

#[test]
fn every_error_reply_is_a_valid_single_line_reply() {
    let bad: [&[u8]; 8] = [
        b"FROB",
        b"",
        b"MAIL FROM:x",
        b"RCPT TO:<a@b.test> X=1",
        b"AUTH X",
        b"DATA x",
        b"NOOP \0",
        b"MAIL FROM:<\xc3\xbc@x.test>",
    ];
    for line in bad {
        let r = err(line).reply();
        assert!((500..=555).contains(&r.code), "{line:?} -> {r}");
        let bytes = r.to_bytes();
        assert!(bytes.ends_with(b"\r\n"));
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}

//! lettre, a Rust SMTP client, against a real server in front of a real redis-server: STARTTLS verified
//! against the test CA, AUTH PLAIN, and a message built with lettre's builder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{HOSTNAME, Harness, queued_id};
use lettre::message::Message;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

#[test]
fn lettre_sends_over_starttls_with_auth_plain() {
    let h = Harness::start(true, &[("app", "app-password", Some("example.test"))], |c| {
        c.relay_networks.clear();
    });
    let tls = TlsParameters::builder(HOSTNAME.to_owned())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(Certificate::from_pem(h.ca.cert_pem().as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(h.smtp.port())
        .hello_name(lettre::transport::smtp::extension::ClientId::Domain(
            "client.test".into(),
        ))
        .tls(Tls::Required(tls))
        .credentials(Credentials::new("app".into(), "app-password".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let message = Message::builder()
        .from("App <app@example.test>".parse().unwrap())
        .to("Someone <someone@dest.test>".parse().unwrap())
        .subject("from lettre")
        .body("hello from lettre\r\n".to_owned())
        .unwrap();
    let response = h.rt.block_on(mailer.send(message)).expect("lettre send");
    assert_eq!(u16::from(response.code()), 250);
    let text: String = response.message().collect::<Vec<_>>().join(" ");
    let id = queued_id(&text).unwrap_or_else(|| panic!("no queue id in {text:?}"));
    let body = String::from_utf8(h.stored_body(&id)).unwrap();
    assert!(body.contains(" with ESMTPSA id "), "{body}");
    assert!(body.contains("Subject: from lettre"), "{body}");
    // lettre writes Date but no Message-ID: ingest adds the Message-ID only.
    assert!(
        body.contains(&format!("\r\nMessage-ID: <{id}@{HOSTNAME}>\r\n")),
        "{body}"
    );
    assert_eq!(body.matches("\r\nDate:").count(), 1, "{body}");
}

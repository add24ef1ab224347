//! The policy fetch against a real HTTPS policy server on 127.0.0.1: tokio-rustls with a CA and a server
//! certificate made in the test, answering canned HTTP/1.1 responses.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{Answer, DOMAIN, HOST, POLICY, Pki, PolicyServer, pki, response, text_plain};
use tern_mta_sts::{
    Discovery, FetchError, FetchOptions, MAX_POLICY_BYTES, Mode, PolicyFetcher, StaticResolver,
    TlsRptResultType, TxtLookup, discover,
};
use tern_testkit::tls::TestCa;
use tokio::net::TcpListener;

/// A fetcher trusting `pki`'s CA that finds every host at 127.0.0.1:`port`.
fn fetcher(pki: &Pki, port: u16, timeout: Duration) -> PolicyFetcher {
    let options = FetchOptions {
        timeout,
        https_port: port,
        extra_ca_file: Some(pki.ca_file()),
    };
    let resolver = StaticResolver(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    PolicyFetcher::new(options, Arc::new(resolver)).unwrap()
}

/// Long enough never to fire in the tests that are not about timeouts.
const GENEROUS: Duration = Duration::from_secs(30);

async fn fetch_with(answer: Answer) -> (Result<tern_mta_sts::Policy, FetchError>, PolicyServer) {
    let pki = pki();
    let server = PolicyServer::start(&pki.ca, &pki.cert, answer).await;
    let result = fetcher(&pki, server.port, GENEROUS).fetch(DOMAIN).await;
    (result, server)
}

#[tokio::test]
async fn a_good_policy_is_fetched_over_verified_tls_with_sni_and_host() {
    let (result, server) = fetch_with(text_plain(POLICY)).await;
    let policy = result.unwrap();
    assert_eq!(policy.mode(), Mode::Enforce);
    assert_eq!(policy.mx(), ["mx.example.test", "*.backup.example.test"]);
    assert_eq!(policy.max_age(), 604800);
    assert!(policy.matches_mx("mx2.backup.example.test."));
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sni.as_deref(), Some(HOST));
    let head = seen[0].head.to_ascii_lowercase();
    assert!(
        head.starts_with("get /.well-known/mta-sts.txt http/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nhost: {HOST}:{}\r\n", server.port)),
        "{head}"
    );
}

#[tokio::test]
async fn a_redirect_is_an_error_and_is_not_followed() {
    let pki = pki();
    let server = PolicyServer::start(&pki.ca, &pki.cert, Answer::Nothing).await;
    let location = format!("https://{HOST}:{}/.well-known/mta-sts.txt", server.port);
    let redirect = PolicyServer::start(
        &pki.ca,
        &pki.cert,
        response(
            "301 Moved Permanently",
            &[("Location", &location), ("Content-Type", "text/plain")],
            POLICY,
        ),
    )
    .await;
    let err = fetcher(&pki, redirect.port, GENEROUS)
        .fetch(DOMAIN)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        FetchError::Redirect {
            host: HOST.into(),
            status: 301,
            location: Some(location)
        }
    );
    assert_eq!(err.result_type(), TlsRptResultType::StsPolicyFetchError);
    assert_eq!(redirect.requests(), 1);
    assert_eq!(server.requests(), 0, "the redirect was followed");
}

#[tokio::test]
async fn a_wrong_content_type_is_an_invalid_policy() {
    let (result, _server) = fetch_with(response("200 OK", &[("Content-Type", "text/html")], POLICY)).await;
    let err = result.unwrap_err();
    assert_eq!(
        err,
        FetchError::ContentType {
            host: HOST.into(),
            found: Some("text/html".into())
        }
    );
    assert_eq!(err.result_type(), TlsRptResultType::StsPolicyInvalid);
}

#[tokio::test]
async fn a_missing_content_type_is_an_invalid_policy() {
    let (result, _server) = fetch_with(response("200 OK", &[], POLICY)).await;
    assert!(
        matches!(result, Err(FetchError::ContentType { found: None, .. })),
        "{result:?}"
    );
}

/// A valid policy padded with an extension field to exactly `len` bytes.
fn padded_policy(len: usize) -> String {
    let mut body = POLICY.to_owned();
    body.push_str("pad: ");
    let fill = len - body.len() - 2;
    body.push_str(&"a".repeat(fill));
    body.push_str("\r\n");
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn a_body_of_exactly_64_kib_is_taken() {
    let (result, _server) = fetch_with(text_plain(&padded_policy(MAX_POLICY_BYTES))).await;
    assert_eq!(result.unwrap().mode(), Mode::Enforce);
}

#[tokio::test]
async fn a_body_over_64_kib_is_refused() {
    let (result, _server) = fetch_with(text_plain(&padded_policy(MAX_POLICY_BYTES + 1))).await;
    let err = result.unwrap_err();
    assert_eq!(
        err,
        FetchError::TooLarge {
            host: HOST.into(),
            limit: MAX_POLICY_BYTES
        }
    );
    assert_eq!(err.result_type(), TlsRptResultType::StsPolicyInvalid);
}

/// A 200 `text/plain` response with a chunked body, cut into `chunk`-byte chunks.
fn chunked(body: &str, chunk: usize) -> Answer {
    let mut r = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for piece in body.as_bytes().chunks(chunk) {
        r.push_str(&format!(
            "{:x}\r\n{}\r\n",
            piece.len(),
            String::from_utf8_lossy(piece)
        ));
    }
    r.push_str("0\r\n\r\n");
    Answer::Bytes(r.into_bytes())
}

#[tokio::test]
async fn a_chunked_body_is_read() {
    let (result, _server) = fetch_with(chunked(POLICY, 7)).await;
    let policy = result.unwrap();
    assert_eq!(policy.mx(), ["mx.example.test", "*.backup.example.test"]);
}

#[tokio::test]
async fn a_chunked_body_over_64_kib_is_refused_without_a_length_up_front() {
    let (result, _server) = fetch_with(chunked(&padded_policy(MAX_POLICY_BYTES + 1), 4096)).await;
    assert!(matches!(result, Err(FetchError::TooLarge { .. })), "{result:?}");
}

#[tokio::test]
async fn a_404_is_an_error() {
    let (result, _server) =
        fetch_with(response("404 Not Found", &[("Content-Type", "text/plain")], "no")).await;
    let err = result.unwrap_err();
    assert_eq!(
        err,
        FetchError::Status {
            host: HOST.into(),
            status: 404
        }
    );
    assert_eq!(err.result_type(), TlsRptResultType::StsPolicyFetchError);
}

#[tokio::test]
async fn a_body_that_is_no_policy_is_invalid() {
    let (result, _server) = fetch_with(text_plain("version: STSv1\nmode: enforce\nmax_age: 1\n")).await;
    let err = result.unwrap_err();
    assert!(matches!(err, FetchError::Invalid { .. }), "{err:?}");
    assert_eq!(err.result_type(), TlsRptResultType::StsPolicyInvalid);
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_a_webpki_failure() {
    let pki = pki();
    let stranger = TestCa::new().unwrap();
    let cert = stranger.issue(&[HOST]).unwrap();
    let server = PolicyServer::start(&stranger, &cert, text_plain(POLICY)).await;
    let err = fetcher(&pki, server.port, GENEROUS)
        .fetch(DOMAIN)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Certificate { .. }), "{err:?}");
    assert_eq!(err.result_type(), TlsRptResultType::StsWebpkiInvalid);
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_webpki_failure() {
    let pki = pki();
    let other = pki.ca.issue(&["mta-sts.other.test"]).unwrap();
    let server = PolicyServer::start(&pki.ca, &other, text_plain(POLICY)).await;
    let err = fetcher(&pki, server.port, GENEROUS)
        .fetch(DOMAIN)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Certificate { .. }), "{err:?}");
    assert_eq!(err.result_type(), TlsRptResultType::StsWebpkiInvalid);
}

#[tokio::test]
async fn a_server_that_never_answers_the_request_times_out() {
    let pki = pki();
    let server = PolicyServer::start(&pki.ca, &pki.cert, Answer::Nothing).await;
    let after = Duration::from_millis(300);
    let err = fetcher(&pki, server.port, after).fetch(DOMAIN).await.unwrap_err();
    assert_eq!(
        err,
        FetchError::Timeout {
            host: HOST.into(),
            after
        }
    );
    assert_eq!(err.result_type(), TlsRptResultType::StsPolicyFetchError);
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_server_that_never_starts_tls_times_out() {
    let pki = pki();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let err = fetcher(&pki, port, Duration::from_millis(300))
        .fetch(DOMAIN)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    holder.abort();
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let pki = pki();
    let port = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let err = fetcher(&pki, port, GENEROUS).fetch(DOMAIN).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Connect { port: p, .. } if p == port),
        "{err:?}"
    );
    assert_eq!(err.result_type(), TlsRptResultType::StsPolicyFetchError);
}

#[tokio::test]
async fn discovery_fetches_for_a_new_id_and_not_for_the_known_one() {
    let pki = pki();
    let server = PolicyServer::start(&pki.ca, &pki.cert, text_plain(POLICY)).await;
    let fetcher = fetcher(&pki, server.port, GENEROUS);
    let txt = TxtLookup::Records(vec!["v=spf1 -all".into(), "v=STSv1; id=20260101T00".into()]);

    let first = discover(&fetcher, DOMAIN, &txt, None).await;
    assert_eq!(first.id(), Some("20260101T00"));
    assert_eq!(first.policy().map(|p| p.mode()), Some(Mode::Enforce));
    assert_eq!(server.requests(), 1);

    let again = discover(&fetcher, DOMAIN, &txt, Some("20260101T00")).await;
    assert_eq!(
        again,
        Discovery::Unchanged {
            id: "20260101T00".into()
        }
    );
    assert_eq!(server.requests(), 1, "the known id was fetched again");

    let changed = discover(&fetcher, DOMAIN, &txt, Some("older")).await;
    assert!(matches!(changed, Discovery::Fetched { .. }), "{changed:?}");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn discovery_reports_a_failed_fetch_with_its_result_type() {
    let pki = pki();
    let server = PolicyServer::start(
        &pki.ca,
        &pki.cert,
        response("404 Not Found", &[("Content-Type", "text/plain")], ""),
    )
    .await;
    let fetcher = fetcher(&pki, server.port, GENEROUS);
    let txt = TxtLookup::Records(vec!["v=STSv1; id=abc".into()]);
    let d = discover(&fetcher, DOMAIN, &txt, None).await;
    assert!(
        matches!(d, Discovery::FetchFailed { ref id, .. } if id == "abc"),
        "{d:?}"
    );
    assert_eq!(d.tls_rpt_failure(), Some(TlsRptResultType::StsPolicyFetchError));
}

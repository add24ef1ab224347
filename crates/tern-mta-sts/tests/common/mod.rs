//! Shared by the integration tests: a real HTTPS policy server on 127.0.0.1 (tokio-rustls with a CA and a
//! server certificate made in the test, answering canned HTTP/1.1 responses and counting the requests).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tern_testkit::tls::{ServerCert, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub const DOMAIN: &str = "example.test";
pub const HOST: &str = "mta-sts.example.test";
pub const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmx: *.backup.example.test\r\nmax_age: 604800\r\n";

/// What the policy server does once the TLS handshake is done.
#[derive(Clone)]
pub enum Answer {
    /// Writes these bytes (a whole HTTP response) and closes.
    Bytes(Vec<u8>),
    /// Reads the request and never answers.
    Nothing,
}

/// What the server saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub sni: Option<String>,
    pub head: String,
}

pub struct PolicyServer {
    pub port: u16,
    requests: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<Answer>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PolicyServer {
    /// Serves `answer` to every connection (until [`PolicyServer::set_answer`]), with `cert` (issued by
    /// `ca`).
    pub async fn start(ca: &TestCa, cert: &ServerCert, answer: Answer) -> PolicyServer {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.chain_pem(ca).as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let (r, s, a) = (requests.clone(), seen.clone(), answer.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, r, s, a) = (acceptor.clone(), r.clone(), s.clone(), a.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    s.lock().unwrap().push(Seen {
                        sni,
                        head: String::from_utf8_lossy(&head).into_owned(),
                    });
                    let answer = a.lock().unwrap().clone();
                    match answer {
                        Answer::Bytes(bytes) => {
                            let _ = tls.write_all(&bytes).await;
                            let _ = tls.shutdown().await;
                        }
                        Answer::Nothing => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                    }
                });
            }
        });
        PolicyServer {
            port,
            requests,
            seen,
            answer,
            task,
        }
    }

    /// The requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// What the next requests get.
    pub fn set_answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Stops listening: connections to the port are refused from now on.
    pub async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// A test CA, written to a file for `extra_ca_file`, and a certificate for the policy host.
pub struct Pki {
    pub ca: TestCa,
    pub cert: ServerCert,
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// The CA file to trust.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }
}

pub fn pki() -> Pki {
    let ca = TestCa::new().unwrap();
    let cert = ca.issue(&[HOST]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    ca.write_to(dir.path()).unwrap();
    Pki { ca, cert, dir }
}

pub fn response(status: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut r = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    Answer::Bytes(r.into_bytes())
}

pub fn text_plain(body: &str) -> Answer {
    response("200 OK", &[("Content-Type", "text/plain; charset=utf-8")], body)
}

//! `tern.v1.MtaSts` through a real tonic client: a control server over a policy cache whose store is a real
//! redis-server (filled directly with `PolicyStore::sts_put` where a test needs entries), and, for Refresh,
//! dnsmasq serving the `_mta-sts` TXT record and the policy host, and a real HTTPS policy server with a test
//! CA.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up should fail loudly

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tern_config::ControlConfig;
use tern_control::ControlServer;
use tern_core::Shutdown;
use tern_core::time::now_ms;
use tern_mta_sts::{CacheOptions, FetchOptions, HickoryDns, PolicyCache};
use tern_proto::v1 as pb;
use tern_proto::v1::mta_sts_client::MtaStsClient;
use tern_queue::{PolicyStore, Queue, RedisQueue, RedisQueueOptions, StsEntry};
use tern_testkit::{Dnsmasq, RedisServer};
use tonic::Code;
use tonic::transport::Channel;

const ENFORCE: &str =
    "version: STSv1\nmode: enforce\nmx: mx.a.example\nmx: *.backup.a.example\nmax_age: 604800\n";
const TESTING: &str = "version: STSv1\nmode: testing\nmx: mx.b.example\nmax_age: 86400\n";
const NONE: &str = "version: STSv1\nmode: none\nmax_age: 86400\n";
const OFF: &str = "MTA-STS is off (delivery.mta_sts.enabled = false)";

/// A control plane serving MtaSts over a cache on a real redis-server; dropping it stops the server.
struct Plane {
    redis: RedisServer,
    store: Arc<RedisQueue>,
    url: String,
    stop: Shutdown,
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Plane {
    async fn client(&self) -> MtaStsClient<Channel> {
        MtaStsClient::connect(self.url.clone()).await.unwrap()
    }
}

/// How the control plane's cache is made.
enum Sts {
    /// No cache: MTA-STS is off.
    Off,
    /// A cache that finds TXT records and policy hosts through `dns` and fetches with `fetch`.
    On { dns: SocketAddr, fetch: FetchOptions },
}

impl Sts {
    /// A cache that never looks anything up (for the calls that only read and write the store).
    fn store_only() -> Sts {
        Sts::On {
            dns: SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
            fetch: FetchOptions {
                timeout: Duration::from_secs(5),
                https_port: 9,
                extra_ca_file: None,
            },
        }
    }
}

async fn plane(keys: Option<PathBuf>, sts: Sts) -> Plane {
    let redis = RedisServer::start().unwrap();
    let store = Arc::new(
        RedisQueue::connect(RedisQueueOptions {
            url: redis.url(),
            shards: 2,
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(1),
            ..RedisQueueOptions::default()
        })
        .await
        .unwrap(),
    );
    let cache = match sts {
        Sts::Off => None,
        Sts::On { dns, fetch } => Some(
            PolicyCache::with_dns(
                store.clone(),
                HickoryDns::from_servers(&[dns]).unwrap(),
                fetch,
                "control-test".into(),
                CacheOptions::default(),
            )
            .unwrap(),
        ),
    };
    let config = ControlConfig {
        grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_keys_file: keys,
        ..ControlConfig::default()
    };
    let queue: Arc<dyn Queue> = store.clone();
    let server = ControlServer::bind_with(&config, queue, cache).await.unwrap();
    let url = format!("http://{}", server.local_addr());
    let stop = Shutdown::new();
    tokio::spawn(server.run(stop.clone()));
    Plane {
        redis,
        store,
        url,
        stop,
    }
}

/// An entry for `domain` holding `policy` (id `id`), fetched an hour ago, expiring `expires_in_ms` from now
/// (negative: that long ago).
fn entry(domain: &str, policy: &str, id: &str, expires_in_ms: i64) -> StsEntry {
    let now = now_ms();
    StsEntry {
        domain: domain.into(),
        policy: policy.into(),
        policy_id: id.into(),
        fetched_at_ms: now - 3_600_000,
        expires_at_ms: now.saturating_add_signed(expires_in_ms),
        last_error: None,
        last_error_at_ms: None,
    }
}

/// An entry made by a failed fetch alone: no policy, only the error.
fn error_only(domain: &str, error: &str) -> StsEntry {
    StsEntry {
        domain: domain.into(),
        last_error: Some(error.into()),
        last_error_at_ms: Some(now_ms() - 60_000),
        ..StsEntry::default()
    }
}

async fn get(client: &mut MtaStsClient<Channel>, domain: &str) -> Result<pb::PolicyInfo, tonic::Status> {
    client
        .get(pb::GetPolicyRequest {
            domain: domain.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn list_page(
    client: &mut MtaStsClient<Channel>,
    page_size: u32,
    page_token: &str,
) -> Result<pb::ListPoliciesResponse, tonic::Status> {
    client
        .list(pb::ListPoliciesRequest {
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn get_shows_the_stored_policy_with_its_state_expiry_and_last_error() {
    let p = plane(None, Sts::store_only()).await;
    let valid = entry("a.example", ENFORCE, "20240101", 86_400_000);
    p.store.sts_put(&valid).await.unwrap();
    let mut failing = entry("b.example", TESTING, "7", 3_600_000);
    failing.last_error = Some("HTTP status 404 from mta-sts.b.example".into());
    failing.last_error_at_ms = Some(now_ms() - 1000);
    p.store.sts_put(&failing).await.unwrap();
    p.store
        .sts_put(&entry("c.example", ENFORCE, "1", -1000))
        .await
        .unwrap();
    p.store
        .sts_put(&entry("d.example", NONE, "2", 86_400_000))
        .await
        .unwrap();
    p.store
        .sts_put(&error_only(
            "e.example",
            "certificate not valid for mta-sts.e.example",
        ))
        .await
        .unwrap();
    let mut c = p.client().await;

    // The domain as given is matched without regard to case or a final dot.
    let info = get(&mut c, " A.Example. ").await.unwrap();
    assert_eq!(info.domain, "a.example");
    assert_eq!(info.state, "valid");
    assert_eq!(info.mode, "enforce");
    assert_eq!(info.mx, ["mx.a.example", "*.backup.a.example"]);
    assert_eq!(info.max_age_seconds, 604_800);
    assert_eq!(info.policy_id, "20240101");
    assert_eq!(info.fetched_at_ms, valid.fetched_at_ms);
    assert_eq!(info.expires_at_ms, valid.expires_at_ms);
    assert_eq!(info.last_error, "");
    assert_eq!(info.last_error_at_ms, 0);
    assert_eq!(info.policy, ENFORCE);

    let info = get(&mut c, "b.example").await.unwrap();
    assert_eq!((info.state.as_str(), info.mode.as_str()), ("valid", "testing"));
    assert_eq!(info.last_error, "HTTP status 404 from mta-sts.b.example");
    assert_eq!(info.last_error_at_ms, failing.last_error_at_ms.unwrap());

    assert_eq!(get(&mut c, "c.example").await.unwrap().state, "expired");
    let none = get(&mut c, "d.example").await.unwrap();
    assert_eq!((none.state.as_str(), none.mode.as_str()), ("none", "none"));
    let only_error = get(&mut c, "e.example").await.unwrap();
    assert_eq!(only_error.state, "no-policy");
    assert_eq!(only_error.mode, "");
    assert_eq!(only_error.policy_id, "");
    assert_eq!(only_error.expires_at_ms, 0);
    assert!(only_error.last_error.contains("certificate"), "{only_error:?}");

    let e = get(&mut c, "unknown.example").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "no MTA-STS policy cached for unknown.example");
    for bad in ["", "a b.example", "user@a.example"] {
        let e = get(&mut c, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(e.message().starts_with("domain: "), "{}", e.message());
    }
}

#[tokio::test]
async fn list_pages_through_every_entry_in_domain_order() {
    let p = plane(None, Sts::store_only()).await;
    let mut c = p.client().await;
    let empty = list_page(&mut c, 0, "").await.unwrap();
    assert!(empty.policies.is_empty() && empty.next_page_token.is_empty());

    let mut domains: Vec<String> = (0..7).map(|i| format!("d{i}.example")).collect();
    // Put out of order: the listing is in domain order whatever the order of writes.
    for d in domains.iter().rev() {
        p.store
            .sts_put(&entry(d, ENFORCE, "1", 86_400_000))
            .await
            .unwrap();
    }
    p.store
        .sts_put(&error_only("d7.example", "timed out"))
        .await
        .unwrap();
    domains.push("d7.example".into());

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_page(&mut c, 3, &token).await.unwrap();
        sizes.push(page.policies.len());
        seen.extend(page.policies.iter().map(|i| (i.domain.clone(), i.state.clone())));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(sizes, [3, 3, 2]);
    let names: Vec<&str> = seen.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(names, domains.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(seen[0].1, "valid");
    assert_eq!(seen[7].1, "no-policy");

    // A page that holds exactly what is left says it is the last.
    let all = list_page(&mut c, 8, "").await.unwrap();
    assert_eq!(all.policies.len(), 8);
    assert!(all.next_page_token.is_empty(), "{}", all.next_page_token);
    // 0 is the default page of 100.
    assert_eq!(list_page(&mut c, 0, "").await.unwrap().policies.len(), 8);

    let e = list_page(&mut c, 1001, "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("page_size"), "{}", e.message());
    let e = list_page(&mut c, 3, "not a token!").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("page_token"), "{}", e.message());
}

#[tokio::test]
async fn evict_removes_the_entry_and_get_then_answers_not_found() {
    let p = plane(None, Sts::store_only()).await;
    p.store
        .sts_put(&entry("a.example", ENFORCE, "1", 86_400_000))
        .await
        .unwrap();
    p.store
        .sts_put(&entry("b.example", ENFORCE, "1", 86_400_000))
        .await
        .unwrap();
    let mut c = p.client().await;
    get(&mut c, "a.example").await.unwrap();

    let evicted = c
        .evict(pb::EvictPolicyRequest {
            domain: "A.EXAMPLE".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(evicted.evicted);
    let e = get(&mut c, "a.example").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(p.store.sts_get("a.example").await.unwrap(), None);
    // The other domain is untouched, and evicting again finds nothing.
    assert_eq!(get(&mut c, "b.example").await.unwrap().state, "valid");
    let again = c
        .evict(pb::EvictPolicyRequest {
            domain: "a.example".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.evicted);
    let e = c
        .evict(pb::EvictPolicyRequest { domain: " ".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn with_mta_sts_off_every_call_is_failed_precondition() {
    let p = plane(None, Sts::Off).await;
    let mut c = p.client().await;
    let off = |r: Result<(), tonic::Status>| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert_eq!(e.message(), OFF);
    };
    off(get(&mut c, "a.example").await.map(drop));
    off(c
        .refresh(pb::RefreshPolicyRequest {
            domain: "a.example".into(),
        })
        .await
        .map(drop));
    off(list_page(&mut c, 0, "").await.map(drop));
    off(c
        .evict(pb::EvictPolicyRequest {
            domain: "a.example".into(),
        })
        .await
        .map(drop));
}

#[tokio::test]
async fn calls_need_the_admin_key_and_a_store_outage_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let keys = common::keys_file(dir.path(), "ops", "s3cret-admin-key");
    let mut p = plane(Some(keys), Sts::store_only()).await;
    p.store
        .sts_put(&entry("a.example", ENFORCE, "1", 86_400_000))
        .await
        .unwrap();
    let mut c = p.client().await;
    let authed = |domain: &str| {
        let mut r = tonic::Request::new(pb::GetPolicyRequest {
            domain: domain.into(),
        });
        r.metadata_mut()
            .insert("authorization", "Bearer s3cret-admin-key".parse().unwrap());
        r
    };
    let e = get(&mut c, "a.example").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = list_page(&mut c, 0, "").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(
        c.get(authed("a.example")).await.unwrap().into_inner().state,
        "valid"
    );

    p.redis.stop().unwrap();
    let e = c.get(authed("a.example")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test]
async fn refresh_fetches_the_policy_now_and_a_failed_fetch_is_an_error_kept_in_the_entry() {
    let pki = https::pki();
    let server = https::PolicyServer::start(&pki, https::text_plain(https::POLICY)).await;
    let dns = Dnsmasq::builder()
        .txt("_mta-sts.example.test", "v=STSv1; id=20250101")
        .host("mta-sts.example.test", Ipv4Addr::LOCALHOST)
        .start()
        .expect("dnsmasq");
    let fetch = FetchOptions {
        timeout: Duration::from_secs(10),
        https_port: server.port,
        extra_ca_file: Some(pki.ca_file()),
    };
    let p = plane(
        None,
        Sts::On {
            dns: dns.addr(),
            fetch,
        },
    )
    .await;
    let mut c = p.client().await;
    let refresh = |domain: &str| pb::RefreshPolicyRequest {
        domain: domain.into(),
    };

    let before = now_ms();
    let info = c.refresh(refresh("Example.Test")).await.unwrap().into_inner();
    assert_eq!(server.requests(), 1);
    assert_eq!(info.domain, "example.test");
    assert_eq!(info.state, "valid");
    assert_eq!(info.mode, "enforce");
    assert_eq!(info.policy_id, "20250101");
    assert_eq!(info.mx, ["mx.example.test", "*.backup.example.test"]);
    assert_eq!(info.max_age_seconds, 604_800);
    assert!(info.fetched_at_ms >= before, "{info:?}");
    assert_eq!(info.expires_at_ms, info.fetched_at_ms + 604_800_000);
    assert_eq!(info.last_error, "");
    // What Refresh answered is what the store holds, for every worker.
    assert_eq!(get(&mut c, "example.test").await.unwrap(), info);
    let stored = p.store.sts_get("example.test").await.unwrap().unwrap();
    assert_eq!(stored.policy_id, "20250101");

    // A refresh fetches even a current policy.
    c.refresh(refresh("example.test")).await.unwrap();
    assert_eq!(server.requests(), 2);

    // A failed fetch: an error naming the domain and the cause; the cached policy stays, with the error.
    server.set_answer(https::response(
        "404 Not Found",
        &[("Content-Type", "text/plain")],
        "gone",
    ));
    let e = c.refresh(refresh("example.test")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .starts_with("fetching the MTA-STS policy of example.test failed: "),
        "{}",
        e.message()
    );
    assert!(e.message().contains("404"), "{}", e.message());
    assert_eq!(server.requests(), 3);
    let kept = get(&mut c, "example.test").await.unwrap();
    assert_eq!(kept.state, "valid");
    assert_eq!(kept.policy_id, "20250101");
    assert!(kept.last_error.contains("404"), "{kept:?}");
    assert!(kept.last_error_at_ms >= info.fetched_at_ms, "{kept:?}");

    // A domain that announces no policy: nothing is fetched, and nothing is cached.
    let e = c.refresh(refresh("other.test")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().starts_with("other.test announces no MTA-STS policy"),
        "{}",
        e.message()
    );
    assert_eq!(server.requests(), 3);
    assert_eq!(
        get(&mut c, "other.test").await.unwrap_err().code(),
        Code::NotFound
    );

    let e = c.refresh(refresh("")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// A real HTTPS policy server on 127.0.0.1 (tokio-rustls, a certificate for `mta-sts.example.test` issued
/// by a test CA), answering a canned HTTP/1.1 response and counting requests; from tern-mta-sts's tests.
mod https {
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tern_testkit::tls::{ServerCert, TestCa};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    pub const HOST: &str = "mta-sts.example.test";
    pub const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmx: *.backup.example.test\r\nmax_age: 604800\r\n";

    /// A test CA, written to a file for `extra_ca_file`, and a certificate for the policy host.
    pub struct Pki {
        pub ca: TestCa,
        pub cert: ServerCert,
        pub dir: tempfile::TempDir,
    }

    impl Pki {
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

    /// A whole HTTP/1.1 response.
    pub fn response(status: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
        let mut r = format!("HTTP/1.1 {status}\r\n");
        for (k, v) in headers {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        r.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        r.into_bytes()
    }

    pub fn text_plain(body: &str) -> Vec<u8> {
        response("200 OK", &[("Content-Type", "text/plain; charset=utf-8")], body)
    }

    pub struct PolicyServer {
        pub port: u16,
        requests: Arc<AtomicUsize>,
        answer: Arc<Mutex<Vec<u8>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for PolicyServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl PolicyServer {
        /// Answers every request with `answer` (until [`PolicyServer::set_answer`]).
        pub async fn start(pki: &Pki, answer: Vec<u8>) -> PolicyServer {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pki.cert.chain_pem(&pki.ca).as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = PrivateKeyDer::from_pem_slice(pki.cert.key_pem.as_bytes()).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
            let acceptor = TlsAcceptor::from(Arc::new(config));
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let requests = Arc::new(AtomicUsize::new(0));
            let answer = Arc::new(Mutex::new(answer));
            let (r, a) = (requests.clone(), answer.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, r, a) = (acceptor.clone(), r.clone(), a.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.ends_with(b"\r\n\r\n") {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        let bytes = a.lock().unwrap().clone();
                        let _ = tls.write_all(&bytes).await;
                        let _ = tls.shutdown().await;
                    });
                }
            });
            PolicyServer {
                port,
                requests,
                answer,
                task,
            }
        }

        /// The requests answered so far.
        pub fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }

        /// What the next requests get.
        pub fn set_answer(&self, answer: Vec<u8>) {
            *self.answer.lock().unwrap() = answer;
        }
    }
}

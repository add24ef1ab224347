//! The control plane over TLS, and with mutual TLS required.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use tern_config::ControlConfig;
use tern_control::ControlServer;
use tern_core::Shutdown;
use tern_proto::v1 as pb;
use tern_proto::v1::queue_admin_client::QueueAdminClient;
use tern_queue::{Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::redis::RedisServer;
use tern_testkit::tls::TestCa;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

async fn serve(config: ControlConfig, redis: &RedisServer) -> (SocketAddr, Shutdown) {
    let queue: Arc<dyn Queue> = Arc::new(
        RedisQueue::connect(RedisQueueOptions {
            url: redis.url(),
            ..RedisQueueOptions::default()
        })
        .await
        .unwrap(),
    );
    let server = ControlServer::bind(&config, queue).await.unwrap();
    let addr = server.local_addr();
    let stop = Shutdown::new();
    tokio::spawn(server.run(stop.clone()));
    (addr, stop)
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let ca_path = ca.write_to(dir.path()).unwrap();
    let cert = ca
        .issue(&["localhost", "127.0.0.1"])
        .unwrap()
        .write_to(dir.path(), "server")
        .unwrap();
    let tls_config = ControlConfig {
        grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls_cert: Some(cert.cert.clone()),
        tls_key: Some(cert.key.clone()),
        ..ControlConfig::default()
    };
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost");

    // TLS: a client trusting the CA gets through.
    let (addr, stop) = serve(tls_config.clone(), &redis).await;
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(client_tls.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = QueueAdminClient::new(channel)
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.totals.unwrap().total, 0);
    // A plaintext client does not.
    let plain = QueueAdminClient::connect(format!("http://{addr}")).await;
    if let Ok(mut c) = plain {
        assert!(c.get_status(pb::GetStatusRequest::default()).await.is_err());
    }
    stop.cancel();

    // Mutual TLS: a client without a certificate is refused.
    let (addr, stop) = serve(
        ControlConfig {
            client_ca: Some(ca_path),
            ..tls_config
        },
        &redis,
    )
    .await;
    let refused = async {
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(client_tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        QueueAdminClient::new(channel)
            .get_status(pb::GetStatusRequest::default())
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(refused.is_err(), "a client without a certificate got through");
    stop.cancel();

    // Unreadable TLS files fail at bind, naming the file.
    let e = ControlServer::bind(
        &ControlConfig {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_cert: Some(dir.path().join("missing.crt")),
            tls_key: Some(cert.key),
            ..ControlConfig::default()
        },
        Arc::new(RedisQueue::new(RedisQueueOptions::default()).unwrap()),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("missing.crt"), "{e}");
}

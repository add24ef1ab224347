//! Shared helpers: a control server on a loopback port in front of a queue on a real redis-server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tern_config::ControlConfig;
use tern_control::{ControlServer, OperatorStores, StsServices};
use tern_core::Shutdown;
use tern_core::{Envelope, Mailbox, Recipient, ReversePath};
use tern_proto::v1::events_client::EventsClient;
use tern_proto::v1::queue_admin_client::QueueAdminClient;
use tern_queue::{NewMessage, Queue, RedisQueue, RedisQueueOptions};
use tern_testkit::redis::RedisServer;
use tonic::transport::Channel;

/// A running control plane and what it serves.
pub struct Control {
    pub redis: RedisServer,
    pub queue: Arc<dyn Queue>,
    /// The same store, for its side stores (history, routes, trace bus).
    pub store: Arc<RedisQueue>,
    pub url: String,
    pub stop: Shutdown,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Control {
    /// A QueueAdmin client.
    pub async fn admin(&self) -> QueueAdminClient<Channel> {
        QueueAdminClient::connect(self.url.clone()).await.unwrap()
    }

    /// An SmtpTrace client.
    pub async fn trace(&self) -> tern_proto::v1::smtp_trace_client::SmtpTraceClient<Channel> {
        tern_proto::v1::smtp_trace_client::SmtpTraceClient::connect(self.url.clone())
            .await
            .unwrap()
    }

    /// An Events client.
    pub async fn events(&self) -> EventsClient<Channel> {
        EventsClient::connect(self.url.clone()).await.unwrap()
    }
}

/// A control server without keys (loopback) or with the keys file `keys`.
pub async fn start(keys: Option<PathBuf>) -> Control {
    let redis = RedisServer::start().unwrap();
    let store = Arc::new(
        RedisQueue::connect(RedisQueueOptions {
            url: redis.url(),
            shards: 4,
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(1),
            ..RedisQueueOptions::default()
        })
        .await
        .unwrap(),
    );
    let queue: Arc<dyn Queue> = store.clone();
    let operator = OperatorStores {
        history: store.clone(),
        routes: store.clone(),
        traces: store.clone(),
    };
    let config = ControlConfig {
        grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_keys_file: keys,
        ..ControlConfig::default()
    };
    let server = ControlServer::bind_all(&config, queue.clone(), StsServices::default(), Some(operator))
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let stop = Shutdown::new();
    tokio::spawn(server.run(stop.clone()));
    Control {
        redis,
        queue,
        store,
        url,
        stop,
    }
}

/// A message from `from` to `to`.
pub fn message(from: &str, to: &[&str]) -> NewMessage {
    let sender = ReversePath::Mailbox(Mailbox::parse(from, false).unwrap());
    let rcpts = to
        .iter()
        .map(|r| Recipient::new(Mailbox::parse(r, false).unwrap()))
        .collect();
    NewMessage::new(
        Envelope::new(sender, rcpts),
        format!(
            "From: {from}\r\nTo: {}\r\nSubject: test\r\n\r\nHello\r\n",
            to.join(", ")
        )
        .into_bytes(),
    )
}

/// Enqueues and returns the message id.
pub async fn enqueue(queue: &Arc<dyn Queue>, msg: NewMessage) -> String {
    queue.enqueue(msg).await.unwrap().message.to_string()
}

/// A keys file with one key `name` whose secret is `key`.
pub fn keys_file(dir: &std::path::Path, name: &str, key: &str) -> PathBuf {
    use sha2::Digest;
    let path = dir.join("admin.keys");
    let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    std::fs::write(&path, format!("# admin keys\n{name}:{digest}\n")).unwrap();
    path
}

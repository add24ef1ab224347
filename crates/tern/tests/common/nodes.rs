//! tern processes of any role, each with its own ports and configuration, on one shared queue: for the
//! telemetry, drain, scaler and multi-node tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tern_testkit::{ChildGuard, free_port, wait_for_tcp};

use super::http;

/// The extra keys of each section (appended to what [`config`] writes; a section may not be repeated).
#[derive(Clone, Debug, Default)]
pub struct Sections {
    pub queue: String,
    pub ingest: String,
    pub delivery: String,
    pub control: String,
    pub telemetry: String,
}

/// The listening ports of one process (free ones).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub smtp: u16,
    pub grpc: u16,
    pub control: u16,
    pub metrics: u16,
}

impl Ports {
    /// Four free ports.
    pub fn free() -> Ports {
        Ports {
            smtp: free_port().unwrap(),
            grpc: free_port().unwrap(),
            control: free_port().unwrap(),
            metrics: free_port().unwrap(),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// The SMTP submission listener.
    pub fn smtp_addr(&self) -> SocketAddr {
        Ports::addr(self.smtp)
    }

    /// The Send API, as a URL.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// The control plane, as a URL.
    pub fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.control)
    }

    /// The metrics and health listener.
    pub fn metrics_addr(&self) -> SocketAddr {
        Ports::addr(self.metrics)
    }
}

/// A configuration: the queue at `redis_url`, MX hosts found through `dns` on `mx_port`, `ports`, and
/// `extra`.
pub fn config(redis_url: &str, dns: SocketAddr, mx_port: u16, ports: &Ports, extra: &Sections) -> String {
    format!(
        r#"
[queue]
url = "{redis_url}"
{queue}
[ingest]
smtp_listen = ["127.0.0.1:{smtp}"]
grpc_listen = "127.0.0.1:{grpc}"
relay_networks = ["127.0.0.1/32"]
hostname = "tern.test"
{ingest}
[delivery]
dns_servers = ["{dns}"]
smtp_port = {mx_port}
helo_name = "tern.test"
poll_interval = "100ms"
{delivery}
[control]
grpc_listen = "127.0.0.1:{control}"
{control_extra}
[telemetry]
metrics_listen = "127.0.0.1:{metrics}"
{telemetry}
"#,
        queue = extra.queue,
        smtp = ports.smtp,
        grpc = ports.grpc,
        ingest = extra.ingest,
        delivery = extra.delivery,
        control = ports.control,
        control_extra = extra.control,
        metrics = ports.metrics,
        telemetry = extra.telemetry,
    )
}

/// Starts `tern ROLE` with `config` (written to `dir/NAME.toml`) and `env`, and waits until its role's
/// listeners and its metrics listener take connections.
pub fn spawn(
    role: &str,
    name: &str,
    dir: &Path,
    config: &str,
    ports: &Ports,
    env: &[(&str, &str)],
) -> ChildGuard {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args([role, "--config", path.to_str().unwrap()]);
    super::scrub_env(&mut cmd);
    // The configuration names the metrics port: the free-port override of scrub_env must not win.
    cmd.env_remove(super::METRICS_ON_FREE_PORT.0);
    cmd.envs(env.iter().copied());
    let child = ChildGuard::spawn_logging_to(name, cmd, dir).unwrap();
    let mut wait = vec![ports.metrics];
    match role {
        "ingest" => wait.extend([ports.smtp, ports.grpc]),
        "control" => wait.push(ports.control),
        "all" => wait.extend([ports.smtp, ports.grpc, ports.control]),
        _ => {}
    }
    for port in wait {
        wait_for_tcp(Ports::addr(port), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}\n{}", child.logs()));
    }
    child
}

/// Waits until `/readyz` of `ports` answers `status`.
pub fn wait_ready(ports: &Ports, status: u16, timeout: Duration, logs: impl Fn() -> String) {
    tern_testkit::ports::wait_until(
        &format!("/readyz to answer {status}"),
        timeout,
        Duration::from_millis(100),
        || Ok(http::try_get(ports.metrics_addr(), "/readyz").is_ok_and(|(s, _)| s == status)),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
}

/// One raw message for the Send API: `from` to `to`, with `marker` in its subject and body.
pub fn raw_request(from: &str, to: &str, marker: &str) -> tern_proto::v1::SendRequest {
    use tern_proto::v1::{Envelope, SendRequest, send_request::Content};
    let raw = format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: {marker}\r\n\r\n{marker}\r\n");
    SendRequest {
        envelope: Some(Envelope {
            mail_from: from.to_string(),
            rcpt_to: vec![to.to_string()],
        }),
        content: Some(Content::Raw(raw.into_bytes())),
        ..Default::default()
    }
}

/// Sends one message through the Send API at `url`; its message id.
pub async fn grpc_send(url: &str, from: &str, to: &str, marker: &str) -> String {
    let mut client = tern_proto::v1::submission_client::SubmissionClient::connect(url.to_string())
        .await
        .unwrap();
    client
        .send(raw_request(from, to, marker))
        .await
        .unwrap_or_else(|e| panic!("Send to {url} failed: {e:?}"))
        .into_inner()
        .message_id
}

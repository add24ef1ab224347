//! The short banner `tern all` prints on standard output once every role has started: each listener, where
//! the queue lives, where mail goes, and the command for a first message. Logs go to standard error, so
//! the banner never mixes into JSON log lines.

use std::fmt::Write as _;
use std::net::SocketAddr;

use tern_config::Config;
use tern_core::Shutdown;
use tern_telemetry::Readiness;
use tokio::task::JoinHandle;

/// Prints the banner once every role has started; prints nothing if the process stops first.
pub fn spawn(
    config: &Config,
    metrics_addr: SocketAddr,
    readiness: &Readiness,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    let text = render(config, metrics_addr);
    let mut states = readiness.subscribe();
    tokio::spawn(async move {
        let started = async {
            loop {
                if states.borrow_and_update().roles_starting == 0 {
                    return true;
                }
                if states.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::select! {
            started = started => if started { print!("{text}") },
            () = shutdown.cancelled() => {}
        }
    })
}

/// The banner's text; `metrics_addr` is where the metrics listener was bound.
pub fn render(config: &Config, metrics_addr: SocketAddr) -> String {
    let ingest = &config.ingest;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tern {} is running: ingest, delivery and control in one process",
        env!("CARGO_PKG_VERSION")
    );
    let relay = if ingest.relay_networks.is_empty() {
        "every client must authenticate".to_string()
    } else {
        let networks: Vec<String> = ingest.relay_networks.iter().map(ToString::to_string).collect();
        let loopback_only = ingest
            .relay_networks
            .iter()
            .all(|net| net.network().is_loopback() && net.broadcast().is_loopback());
        let which = if loopback_only {
            "loopback"
        } else {
            "these networks"
        };
        format!("relaying without AUTH from {which} only: {}", networks.join(", "))
    };
    let _ = writeln!(
        out,
        "  SMTP submission   {}  ({relay})",
        addrs(&ingest.smtp_listen)
    );
    if !ingest.smtps_listen.is_empty() {
        let _ = writeln!(out, "  SMTPS             {}", addrs(&ingest.smtps_listen));
    }
    let _ = writeln!(out, "  gRPC Send API     {}", ingest.grpc_listen);
    let _ = writeln!(out, "  control (ternctl) {}", config.control.grpc_listen);
    let _ = writeln!(
        out,
        "  metrics, health   http://{metrics_addr}/metrics /healthz /readyz"
    );
    let _ = writeln!(out, "  queue             {}", crate::queue::describe(config));
    let delivery = match &config.delivery.sandbox_dir {
        Some(dir) => format!(
            "sandbox: each message is written to {}/<id>.eml, nothing is sent",
            dir.display()
        ),
        None => "to the recipients' MX hosts".to_string(),
    };
    let _ = writeln!(out, "  delivery          {delivery}");
    let ingest_url = format!("http://{}", ingest.grpc_listen);
    // Without the sandbox the message really goes out, and example.net publishes a null MX (RFC 7505): a
    // newcomer copying the sandbox's command would see a bounce, so name a recipient of their own instead.
    // The sender too: example.com's SPF and DMARC records say no server may send its mail.
    let (sender, recipient) = if config.delivery.sandbox_dir.is_some() {
        let _ = writeln!(out, "A first message:");
        ("you@example.com", "friend@example.net")
    } else {
        let _ = writeln!(
            out,
            "A first message (it is really sent: use a domain you control after --from, a mailbox you own after --to):"
        );
        ("you@your-domain.example", "you@your-domain.example")
    };
    let _ = writeln!(
        out,
        "  ternctl send --ingest {ingest_url} --from {sender} --to {recipient} --subject hello --text hi"
    );
    out
}

/// Listener addresses, comma-separated.
fn addrs(list: &[SocketAddr]) -> String {
    let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
    if shown.is_empty() {
        "off".into()
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_banner_names_every_listener_the_store_and_a_first_command() {
        let config = Config::default();
        let text = render(&config, config.telemetry.metrics_listen);
        for expected in [
            "SMTP submission   127.0.0.1:2587",
            "relaying without AUTH from loopback only: 127.0.0.0/8, ::1/128",
            "gRPC Send API     127.0.0.1:7071",
            "control (ternctl) 127.0.0.1:7070",
            "embedded store in ",
            "tern-data",
            "ternctl send --ingest http://127.0.0.1:7071",
            "http://127.0.0.1:9090/metrics",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
    }

    #[test]
    fn the_banner_says_when_mail_goes_to_the_sandbox() {
        let mut config = Config::default();
        config.delivery.sandbox_dir = Some("mail-out".into());
        let text = render(&config, config.telemetry.metrics_listen);
        assert!(text.contains("mail-out/<id>.eml, nothing is sent"), "{text}");
        assert!(text.contains("--to friend@example.net"), "{text}");
    }

    #[test]
    fn without_the_sandbox_the_first_command_names_no_domain_that_bounces() {
        let config = Config::default();
        let text = render(&config, config.telemetry.metrics_listen);
        assert!(!text.contains("example.net"), "{text}");
        assert!(!text.contains("you@example.com"), "{text}");
        assert!(text.contains("it is really sent"), "{text}");
    }

    #[test]
    fn relay_networks_beyond_loopback_are_not_called_loopback() {
        let mut config = Config::default();
        config.ingest.relay_networks = vec!["10.0.0.0/8".parse().unwrap()];
        let text = render(&config, config.telemetry.metrics_listen);
        assert!(text.contains("from these networks only: 10.0.0.0/8"), "{text}");
    }
}

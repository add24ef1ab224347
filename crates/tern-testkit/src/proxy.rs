//! A TCP relay that counts the connections open through it: put it where a peer expects a mail exchanger,
//! in front of the real one, to see how many connections a client holds open at once.
//!
//! It runs on std threads (one to accept, two per connection), so it works from plain and tokio tests alike.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A running relay; it stops accepting when dropped.
pub struct CountingProxy {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct Stats {
    open: AtomicUsize,
    max: AtomicUsize,
    total: AtomicUsize,
    /// (opened, closed) of each finished connection, relative to the start.
    spans: Mutex<Vec<(Duration, Duration)>>,
}

impl CountingProxy {
    /// Relays connections to `listen` to `upstream`; what the server sends reaches the client `latency`
    /// late (a network round trip), so that, say, a QUIT takes a while.
    pub fn start(listen: SocketAddr, upstream: SocketAddr, latency: Duration) -> Result<CountingProxy> {
        let listener = TcpListener::bind(listen).with_context(|| format!("binding the proxy on {listen}"))?;
        listener.set_nonblocking(true)?;
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stats.clone(), stop.clone());
        let t0 = Instant::now();
        thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                let open = s.open.fetch_add(1, Ordering::SeqCst) + 1;
                s.max.fetch_max(open, Ordering::SeqCst);
                s.total.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                thread::spawn(move || {
                    let opened = t0.elapsed();
                    if let Ok(server) = TcpStream::connect(upstream) {
                        relay(client, server, latency);
                    }
                    s.open.fetch_sub(1, Ordering::SeqCst);
                    s.spans
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((opened, t0.elapsed()));
                });
            }
        });
        Ok(CountingProxy {
            addr: listen,
            stats,
            stop,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The most connections that were open at once.
    pub fn max(&self) -> usize {
        self.stats.max.load(Ordering::SeqCst)
    }

    /// Connections accepted in all.
    pub fn total(&self) -> usize {
        self.stats.total.load(Ordering::SeqCst)
    }

    /// The finished connections as "opened-closed" seconds since the start, in order, for failure messages.
    pub fn spans(&self) -> String {
        let mut spans = self
            .stats
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        spans.sort();
        let v: Vec<String> = spans
            .iter()
            .map(|(a, b)| format!("{:.3}-{:.3}", a.as_secs_f64(), b.as_secs_f64()))
            .collect();
        v.join(" ")
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies both ways until both sides are done.
fn relay(client: TcpStream, server: TcpStream, latency: Duration) {
    let (Ok(mut client_r), Ok(mut server_r)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (mut client_w, mut server_w) = (client, server);
    let up = thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut server_w);
        let _ = server_w.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = server_r.read(&mut buf) {
        if n == 0 {
            break;
        }
        thread::sleep(latency);
        if client_w.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client_w.shutdown(Shutdown::Write);
    let _ = up.join();
}

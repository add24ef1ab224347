//! `dnsmasq` as the authoritative DNS for test domains, plus a minimal DNS client to check it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::ports::{free_udp_tcp_port, wait_until};
use crate::process::ChildGuard;
use crate::{require_tool, running_as_root};

/// How long `dnsmasq` may take to answer its first query.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// DNS record type A.
pub const TYPE_A: u16 = 1;
/// DNS record type CNAME.
pub const TYPE_CNAME: u16 = 5;
/// DNS record type MX.
pub const TYPE_MX: u16 = 15;
/// DNS record type TXT.
pub const TYPE_TXT: u16 = 16;
/// DNS record type AAAA.
pub const TYPE_AAAA: u16 = 28;

/// Records for a [`Dnsmasq`]; made by [`Dnsmasq::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct DnsmasqBuilder {
    records: Vec<String>,
    local_domains: Vec<String>,
    local_ttl: Option<u32>,
    txt_errors: Vec<String>,
}

impl DnsmasqBuilder {
    /// `--mx-host=DOMAIN,HOST,PREF`: an MX record.
    pub fn mx(mut self, domain: &str, host: &str, preference: u16) -> Self {
        self.records
            .push(format!("--mx-host={domain},{host},{preference}"));
        self
    }

    /// `--host-record=NAME,IP`: an A or AAAA record (both directions; dnsmasq also answers the PTR).
    pub fn host(mut self, name: &str, ip: impl Into<IpAddr>) -> Self {
        self.records.push(format!("--host-record={name},{}", ip.into()));
        self
    }

    /// `--txt-record=NAME,TEXT`: one TXT string.
    ///
    /// dnsmasq splits the text at every comma into separate strings (no escape works), and keeps quote
    /// characters literally, so `text` must not contain a comma: [`DnsmasqBuilder::start`] refuses it.
    pub fn txt(mut self, name: &str, text: &str) -> Self {
        if text.contains(',') {
            self.txt_errors.push(format!(
                "TXT for {name} contains a comma, which dnsmasq would split: {text:?}"
            ));
        }
        self.records.push(format!("--txt-record={name},{text}"));
        self
    }

    /// `--dns-rr=DOMAIN,15,000000`: a null MX (RFC 7505: preference 0, root target).
    pub fn null_mx(mut self, domain: &str) -> Self {
        self.records.push(format!("--dns-rr={domain},15,000000"));
        self
    }

    /// `--cname=ALIAS,TARGET`.
    pub fn cname(mut self, alias: &str, target: &str) -> Self {
        self.records.push(format!("--cname={alias},{target}"));
        self
    }

    /// `--local=/DOMAIN/`: names under `domain` that have no record answer NXDOMAIN (otherwise REFUSED).
    /// `test` is always local.
    pub fn local_domain(mut self, domain: &str) -> Self {
        self.local_domains.push(domain.trim_matches('.').to_owned());
        self
    }

    /// `--local-ttl=SECONDS`: the TTL of the configured records. dnsmasq's default is 0, which tells resolvers
    /// not to cache them.
    pub fn local_ttl(mut self, seconds: u32) -> Self {
        self.local_ttl = Some(seconds);
        self
    }

    /// Any other dnsmasq option, for example `"--log-queries"`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.records.push(arg.to_owned());
        self
    }

    /// Starts `dnsmasq -k` on 127.0.0.1 with a port free for UDP and TCP, and waits (10 s at most) until it
    /// answers a real DNS query over UDP.
    pub fn start(self) -> Result<Dnsmasq> {
        if let Some(err) = self.txt_errors.first() {
            bail!("{err}");
        }
        let program = require_tool("dnsmasq")?;
        let port = free_udp_tcp_port()?;
        let mut cmd = Command::new(program);
        cmd.arg("-k")
            .arg(format!("--port={port}"))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--conf-file=/dev/null")
            // No pid file: several instances run at once.
            .arg("--pid-file")
            .arg("--log-facility=-");
        if running_as_root() {
            cmd.arg("--user=root");
        }
        for domain in &self.local_domains {
            cmd.arg(format!("--local=/{domain}/"));
        }
        if let Some(ttl) = self.local_ttl {
            cmd.arg(format!("--local-ttl={ttl}"));
        }
        cmd.args(&self.records);
        let mut child = ChildGuard::spawn("dnsmasq", cmd)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let probe = format!("dnsmasq-ready.{}", self.local_domains[0]);
        let ready = wait_until(
            &format!("dnsmasq on {addr} to answer a UDP query"),
            READY_TIMEOUT,
            Duration::from_millis(20),
            || {
                if let Some(status) = child.try_wait()? {
                    bail!("dnsmasq exited early with {status}");
                }
                Ok(query_with_timeout(addr, &probe, TYPE_A, Duration::from_millis(200)).is_ok())
            },
        );
        if let Err(err) = ready {
            return Err(anyhow::anyhow!("{err:#}\n{}", child.logs()));
        }
        Ok(Dnsmasq { child, addr })
    }
}

/// A running `dnsmasq`, killed when dropped.
#[derive(Debug)]
pub struct Dnsmasq {
    child: ChildGuard,
    addr: SocketAddr,
}

impl Dnsmasq {
    /// An empty configuration with `test` as a local domain.
    pub fn builder() -> DnsmasqBuilder {
        DnsmasqBuilder {
            records: Vec::new(),
            local_domains: vec!["test".to_owned()],
            local_ttl: None,
            txt_errors: Vec::new(),
        }
    }

    /// `127.0.0.1:PORT`, for UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Asks this server: see [`query`].
    pub fn query(&self, name: &str, rtype: u16) -> Result<DnsReply> {
        query(self.addr, name, rtype)
    }

    /// The process guard (pid, kill, raw output).
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.child
    }

    /// dnsmasq's log (it logs to stderr with `--log-facility=-`).
    pub fn logs(&self) -> String {
        self.child.logs()
    }
}

/// The data of one answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// A mail exchanger; the root (`""`) for a null MX.
    Mx {
        /// Lower is preferred.
        preference: u16,
        /// Host name without the final dot.
        exchange: String,
    },
    /// The character strings of a TXT record.
    Txt(Vec<String>),
    /// A canonical name, without the final dot.
    Cname(String),
    /// Any other type, raw.
    Other(Vec<u8>),
}

/// One answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// Owner name, without the final dot.
    pub name: String,
    /// Record type.
    pub rtype: u16,
    /// TTL in seconds.
    pub ttl: u32,
    /// Decoded data.
    pub data: RecordData,
}

/// A DNS response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsReply {
    /// Response code: 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED.
    pub rcode: u8,
    /// Authoritative-answer flag.
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<DnsRecord>,
}

impl DnsReply {
    /// The MX answers as `(preference, exchange)`, sorted by preference.
    pub fn mx(&self) -> Vec<(u16, String)> {
        let mut out: Vec<(u16, String)> = self
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RecordData::Mx { preference, exchange } => Some((*preference, exchange.clone())),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// The A and AAAA answers.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.answers
            .iter()
            .filter_map(|r| match r.data {
                RecordData::A(ip) => Some(IpAddr::V4(ip)),
                RecordData::Aaaa(ip) => Some(IpAddr::V6(ip)),
                _ => None,
            })
            .collect()
    }

    /// Each TXT answer with its strings concatenated.
    pub fn txt(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|r| match &r.data {
                RecordData::Txt(parts) => Some(parts.concat()),
                _ => None,
            })
            .collect()
    }
}

/// Sends one query for `name`/`rtype` over UDP to `server` (2 s time-out) and decodes the reply.
///
/// A minimal stub for tests and readiness checks: no retries, no TCP fallback, no EDNS.
pub fn query(server: SocketAddr, name: &str, rtype: u16) -> Result<DnsReply> {
    query_with_timeout(server, name, rtype, Duration::from_secs(2))
}

fn query_with_timeout(server: SocketAddr, name: &str, rtype: u16, timeout: Duration) -> Result<DnsReply> {
    let id: u16 = std::process::id() as u16 ^ 0x5a5a;
    let packet = encode_query(id, name, rtype)?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (Ipv6Addr::LOCALHOST, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.connect(server)?;
    socket.send(&packet)?;
    let mut buf = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .with_context(|| format!("no DNS answer from {server} for {name} type {rtype}"))?;
        let reply = buf.get(..n).ok_or_else(|| anyhow!("short read"))?;
        if reply.len() >= 2 && u16::from_be_bytes([reply[0], reply[1]]) == id {
            return decode_reply(reply);
        }
    }
}

fn encode_query(id: u16, name: &str, rtype: u16) -> Result<Vec<u8>> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        let len = u8::try_from(label.len()).ok().filter(|l| *l <= 63);
        let len = len.ok_or_else(|| anyhow!("DNS label too long in {name:?}"))?;
        p.push(len);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&rtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes()); // IN
    Ok(p)
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.msg.len());
        let end = end.ok_or_else(|| anyhow!("DNS message truncated at {}", self.pos))?;
        let out = &self.msg[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a possibly compressed name at the current position.
    fn name(&mut self) -> Result<String> {
        let (name, next) = read_name(self.msg, self.pos)?;
        self.pos = next;
        Ok(name)
    }
}

/// Decodes the name at `pos`; returns it and the position after it (after the first pointer, if any).
fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize)> {
    let mut name = String::new();
    let mut after = None;
    for _ in 0..128 {
        let len = *msg.get(pos).ok_or_else(|| anyhow!("name runs off the message"))?;
        match len {
            0 => return Ok((name, after.unwrap_or(pos + 1))),
            l if l & 0xc0 == 0xc0 => {
                let low = *msg
                    .get(pos + 1)
                    .ok_or_else(|| anyhow!("truncated name pointer"))?;
                after.get_or_insert(pos + 2);
                pos = usize::from(u16::from_be_bytes([l & 0x3f, low]));
            }
            l => {
                let label = msg
                    .get(pos + 1..pos + 1 + usize::from(l))
                    .ok_or_else(|| anyhow!("truncated label"))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label));
                pos += 1 + usize::from(l);
            }
        }
    }
    bail!("DNS name has too many labels or a pointer loop")
}

fn decode_reply(msg: &[u8]) -> Result<DnsReply> {
    let mut r = Reader { msg, pos: 0 };
    let _id = r.u16()?;
    let flags = r.u16()?;
    ensure!(flags & 0x8000 != 0, "not a DNS response");
    let qd = r.u16()?;
    let an = r.u16()?;
    let _ns = r.u16()?;
    let _ar = r.u16()?;
    for _ in 0..qd {
        r.name()?;
        r.bytes(4)?;
    }
    let mut answers = Vec::with_capacity(usize::from(an));
    for _ in 0..an {
        let name = r.name()?;
        let rtype = r.u16()?;
        let _class = r.u16()?;
        let ttl = r.u32()?;
        let len = usize::from(r.u16()?);
        let start = r.pos;
        let rdata = r.bytes(len)?;
        let data = match rtype {
            TYPE_A if len == 4 => RecordData::A(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
            TYPE_AAAA if len == 16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(rdata);
                RecordData::Aaaa(Ipv6Addr::from(o))
            }
            TYPE_MX if len >= 3 => RecordData::Mx {
                preference: u16::from_be_bytes([rdata[0], rdata[1]]),
                exchange: read_name(msg, start + 2)?.0,
            },
            TYPE_CNAME => RecordData::Cname(read_name(msg, start)?.0),
            TYPE_TXT => {
                let mut parts = Vec::new();
                let mut i = 0;
                while let Some(&l) = rdata.get(i) {
                    let s = rdata
                        .get(i + 1..i + 1 + usize::from(l))
                        .ok_or_else(|| anyhow!("truncated TXT string"))?;
                    parts.push(String::from_utf8_lossy(s).into_owned());
                    i += 1 + usize::from(l);
                }
                RecordData::Txt(parts)
            }
            _ => RecordData::Other(rdata.to_vec()),
        };
        answers.push(DnsRecord {
            name,
            rtype,
            ttl,
            data,
        });
    }
    Ok(DnsReply {
        rcode: (flags & 0x000f) as u8,
        authoritative: flags & 0x0400 != 0,
        answers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn decodes_compressed_mx_and_txt() {
        // Captured from dnsmasq 2.90: nullmx.test MX -> 0 "." ; plain.test TXT "a" "b".
        let nullmx =
            b"\x12\x34\x85\x80\x00\x01\x00\x01\x00\x00\x00\x00\x06nullmx\x04test\x00\x00\x0f\x00\x01\
\xc0\x0c\x00\x0f\x00\x01\x00\x00\x00\x00\x00\x03\x00\x00\x00";
        let reply = decode_reply(nullmx).unwrap();
        assert_eq!(reply.rcode, 0);
        assert_eq!(reply.mx(), vec![(0, String::new())]);
        assert_eq!(reply.answers[0].name, "nullmx.test");
        let txt = b"\x12\x34\x85\x80\x00\x01\x00\x01\x00\x00\x00\x00\x05plain\x04test\x00\x00\x10\x00\x01\
\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x00\x00\x04\x01a\x01b";
        let reply = decode_reply(txt).unwrap();
        assert_eq!(
            reply.answers[0].data,
            RecordData::Txt(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            hex(&encode_query(1, "a.b.", 1).unwrap()),
            "000101000001000000000000016101620000010001"
        );
    }

    #[test]
    fn pointer_loops_are_errors() {
        let msg = b"\x00\x00\x80\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c";
        assert!(decode_reply(msg).is_err());
    }
}

//! A small scriptable DNS server over UDP on loopback, for the answers dnsmasq will not give: a referral
//! (NS records without SOA, as from a server that does not recurse) and NXDOMAIN for AAAA alone (as from
//! some broken servers). Each name and type gets a fixed [`Answer`]; anything else is NXDOMAIN.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{NS, SOA};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// The answer to one name and type.
#[derive(Clone, Debug)]
pub enum Answer {
    /// NOERROR with these records.
    Records(Vec<RData>),
    /// NOERROR without records, with the zone's SOA in the authority section (RFC 2308 NODATA).
    NoData,
    /// NOERROR without records, with NS records for the name and no SOA: a referral.
    Referral,
    /// NXDOMAIN, with the zone's SOA.
    NxDomain,
}

/// A running fake DNS server; stopped when dropped.
pub struct FakeDns {
    pub addr: SocketAddr,
    /// Every question asked, as `name TYPE`.
    pub asked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn name(n: &str) -> Name {
    Name::from_ascii(n).unwrap()
}

impl FakeDns {
    /// Serves `answers`, keyed by lower-case name without the final dot and type.
    pub async fn start(answers: Vec<(&str, RecordType, Answer)>) -> FakeDns {
        let table: HashMap<(String, RecordType), Answer> = answers
            .into_iter()
            .map(|(n, t, a)| ((n.to_ascii_lowercase(), t), a))
            .collect();
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind fake DNS");
        let addr = socket.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(q) = query.queries.first().cloned() else {
                    continue;
                };
                let qname = q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
                seen.lock().unwrap().push(format!("{qname} {}", q.query_type()));
                let mut reply = Message::response(query.metadata.id, OpCode::Query);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.add_query(q.clone());
                let soa = Record::from_rdata(
                    name("test."),
                    60,
                    RData::SOA(SOA::new(
                        name("ns.test."),
                        name("hostmaster.test."),
                        1,
                        60,
                        60,
                        600,
                        60,
                    )),
                );
                match table
                    .get(&(qname, q.query_type()))
                    .cloned()
                    .unwrap_or(Answer::NxDomain)
                {
                    Answer::Records(records) => {
                        for data in records {
                            reply.add_answer(Record::from_rdata(q.name().clone(), 60, data));
                        }
                    }
                    Answer::NoData => {
                        reply.add_authority(soa);
                    }
                    Answer::Referral => {
                        for server in ["ns1.elsewhere.example.", "ns2.elsewhere.example."] {
                            reply.add_authority(Record::from_rdata(
                                q.name().clone(),
                                60,
                                RData::NS(NS(name(server))),
                            ));
                        }
                    }
                    Answer::NxDomain => {
                        reply.metadata.response_code = ResponseCode::NXDomain;
                        reply.add_authority(soa);
                    }
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        FakeDns { addr, asked, task }
    }

    /// The questions asked so far, as `name TYPE`.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

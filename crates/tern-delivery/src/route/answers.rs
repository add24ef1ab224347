//! What DNS answers mean for routing, pure: an empty answer told apart (NODATA proven by an SOA, a bare
//! one, a referral: [`empty_answer`]), and a name's addresses, or why it has none and whether that is final,
//! from its A and AAAA answers ([`addresses_from`]).

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use tern_config::sections::IpVersion;

use super::{RouteFailure, filter_ips};

/// What an answer without records of the type asked (NOERROR, empty answer section) means, after RFC 2308
/// 2.2.1: "It is possible to distinguish between a NODATA and a referral response by the presence of a SOA
/// record in the authority section or the absence of NS records in the authority section."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmptyAnswer {
    /// NODATA with the zone's SOA (RFC 2308 NODATA types 1 and 2, NS records beside it or not): the name
    /// exists without records of the type. The one empty answer that can make a domain fail for good.
    NoData,
    /// Neither SOA nor NS: RFC 2308's NODATA type 3, as some servers send it (dnsmasq for its own records),
    /// but also what hickory reports when it gives up on a CNAME chain ("too deep"). Taken as "no MX" (the
    /// domain's addresses are asked next) and as "no address of this family", never as proof.
    Bare,
    /// NS records without SOA: a referral from a server that does not recurse. No answer at all.
    Referral,
}

/// What a lookup error says about the records asked: `None` when it is no empty NOERROR answer (NXDOMAIN,
/// SERVFAIL, REFUSED, a timeout, ...).
pub fn empty_answer(e: &NetError) -> Option<EmptyAnswer> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no_records))
            if no_records.response_code == ResponseCode::NoError =>
        {
            Some(if no_records.soa.is_some() {
                EmptyAnswer::NoData
            } else if no_records.ns.is_some() {
                EmptyAnswer::Referral
            } else {
                EmptyAnswer::Bare
            })
        }
        _ => None,
    }
}

/// Whether a lookup error is an empty NOERROR answer that is no referral: NODATA, with an SOA to prove it
/// or without.
pub(crate) fn is_no_data(e: &NetError) -> bool {
    matches!(empty_answer(e), Some(EmptyAnswer::NoData | EmptyAnswer::Bare))
}

/// What one address lookup (A or AAAA) of a name found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// These addresses.
    Addresses(Vec<IpAddr>),
    /// NODATA with the zone's SOA ([`EmptyAnswer::NoData`]): the name exists, with no address of this
    /// family.
    NoData,
    /// An answer without records and without SOA ([`EmptyAnswer::Bare`]): probably no address of this
    /// family, but no proof.
    Empty,
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// No usable answer (SERVFAIL, REFUSED, a referral, a timeout): nothing is known, the failure is
    /// temporary.
    Failed(RouteFailure),
}

/// What each address lookup of one name found: `None` for a family not asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressAnswers {
    /// The AAAA lookup.
    pub v6: Option<Found>,
    /// The A lookup.
    pub v4: Option<Found>,
}

impl AddressAnswers {
    /// Whether a family `version` allows has an address.
    pub fn has_usable_address(&self, version: IpVersion) -> bool {
        let has = |f: &Option<Found>| matches!(f, Some(Found::Addresses(a)) if !a.is_empty());
        (version != IpVersion::V4 && has(&self.v6)) || (version != IpVersion::V6 && has(&self.v4))
    }
}

/// Which name an address lookup was for: it decides what no address at all means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressOf {
    /// A domain without MX records, its own mail exchanger (implicit MX): without addresses either, and
    /// proven so, mail for it cannot be routed, and that is final.
    ImplicitMx,
    /// An MX host, a route's host or the relay: never final (the mail waits for DNS or the configuration to
    /// be mended).
    Host,
}

/// The addresses to try for `name` from what its lookups found, with `port`, in `version`'s order.
///
/// Any address of a family `version` allows wins. Otherwise a failed lookup defers (nothing is known), and
/// so do addresses only of the family `version` leaves out (4.4.4, saying so: the destination exists and
/// this configuration cannot reach it; Postfix, which asks only the families it uses, bounces it as having
/// no address, which is untrue). An [`AddressOf::Host`] without addresses always defers (4.4.3). An
/// [`AddressOf::ImplicitMx`] fails for good only when both families were asked and agree: NXDOMAIN for both
/// (5.1.2), or NODATA with SOA for both (5.4.4); an empty answer without SOA, or answers that disagree,
/// defer.
pub fn addresses_from(
    name: &str,
    port: u16,
    answers: AddressAnswers,
    of: AddressOf,
    version: IpVersion,
) -> Result<Vec<SocketAddr>, RouteFailure> {
    let (usable, other) = match version {
        IpVersion::Any => (vec![&answers.v6, &answers.v4], None),
        IpVersion::V4 => (vec![&answers.v4], Some((&answers.v6, "IPv6", "v4"))),
        IpVersion::V6 => (vec![&answers.v6], Some((&answers.v4, "IPv4", "v6"))),
    };
    let mut ips = Vec::new();
    for found in usable.iter().copied().flatten() {
        if let Found::Addresses(a) = found {
            ips.extend(a.iter().copied());
        }
    }
    let ips = filter_ips(ips, version);
    if !ips.is_empty() {
        return Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect());
    }
    if let Some(Some(Found::Failed(e))) = usable.iter().find(|f| matches!(f, Some(Found::Failed(_)))) {
        return Err(e.clone());
    }
    if let Some((Some(Found::Addresses(a)), family, setting)) = other
        && !a.is_empty()
    {
        let what = match of {
            AddressOf::ImplicitMx => format!("{name} has no MX record and"),
            AddressOf::Host => format!("host {name}"),
        };
        return Err(RouteFailure::Temporary {
            status: "4.4.4",
            text: format!(
                "{what} has only {family} addresses, which delivery.ip_version = \"{setting}\" leaves out"
            ),
        });
    }
    let every = [&answers.v6, &answers.v4];
    if let Some(Some(Found::Failed(e))) = every.iter().find(|f| matches!(f, Some(Found::Failed(_)))) {
        return Err(e.clone());
    }
    match of {
        AddressOf::ImplicitMx if every.iter().all(|f| matches!(f, Some(Found::NxDomain))) => {
            Err(RouteFailure::Permanent {
                status: "5.1.2",
                text: format!("domain {name} does not exist"),
            })
        }
        AddressOf::ImplicitMx if every.iter().all(|f| matches!(f, Some(Found::NoData))) => {
            Err(RouteFailure::Permanent {
                status: "5.4.4",
                text: format!("{name} has no MX record and no address record (NODATA)"),
            })
        }
        AddressOf::ImplicitMx => Err(RouteFailure::Temporary {
            status: "4.4.3",
            text: format!(
                "{name} has no MX record and no address, but the DNS answers do not prove it (an answer \
                 without SOA, or answers that disagree)"
            ),
        }),
        AddressOf::Host if usable.iter().all(|f| matches!(f, Some(Found::NxDomain))) => {
            Err(RouteFailure::Temporary {
                status: "4.4.3",
                text: format!("host {name} does not exist (NXDOMAIN)"),
            })
        }
        AddressOf::Host => Err(RouteFailure::Temporary {
            status: "4.4.3",
            text: format!("host {name} has no usable address"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::{DnsResponse, Message, OpCode, Query};
    use hickory_resolver::proto::rr::rdata::{NS, SOA};
    use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

    fn name(n: &str) -> Name {
        Name::from_ascii(n).unwrap()
    }

    /// The error hickory makes of a response with `code`, no answer and `authorities`, as it makes it of a
    /// server's reply (`DnsError::from_response`).
    fn error_of(code: ResponseCode, authorities: Vec<Record>) -> NetError {
        let mut m = Message::response(7, OpCode::Query);
        m.add_query(Query::query(name("b.test."), RecordType::MX));
        m.metadata.response_code = code;
        m.add_authorities(authorities);
        let response = DnsResponse::from_message(m).unwrap();
        match DnsError::from_response(response) {
            Err(e) => NetError::Dns(e),
            Ok(r) => panic!("hickory took it for an answer: {r:?}"),
        }
    }

    fn soa() -> Record {
        let data = SOA::new(name("ns.b.test."), name("hostmaster.b.test."), 1, 2, 3, 4, 5);
        Record::from_rdata(name("b.test."), 600, RData::SOA(data))
    }

    fn ns(zone: &str, server: &str) -> Record {
        Record::from_rdata(name(zone), 600, RData::NS(NS(name(server))))
    }

    #[test]
    fn only_an_empty_answer_with_the_zones_soa_is_nodata() {
        // RFC 2308 NODATA type 2 (SOA alone), and type 1 (SOA and NS).
        assert_eq!(
            empty_answer(&error_of(ResponseCode::NoError, vec![soa()])),
            Some(EmptyAnswer::NoData)
        );
        let type1 = error_of(ResponseCode::NoError, vec![soa(), ns("b.test.", "ns.b.test.")]);
        assert_eq!(empty_answer(&type1), Some(EmptyAnswer::NoData));
        // A referral from a server that does not recurse: NS for the zone (or the root), no SOA.
        for referral in [
            error_of(ResponseCode::NoError, vec![ns("b.test.", "ns1.elsewhere.test.")]),
            error_of(ResponseCode::NoError, vec![ns(".", "a.root-servers.net.")]),
        ] {
            assert_eq!(
                empty_answer(&referral),
                Some(EmptyAnswer::Referral),
                "{referral:?}"
            );
            assert!(!is_no_data(&referral));
        }
        // Nothing in the authority section: no proof either way.
        let bare = error_of(ResponseCode::NoError, vec![]);
        assert_eq!(empty_answer(&bare), Some(EmptyAnswer::Bare));
        // Not empty answers at all.
        assert_eq!(empty_answer(&error_of(ResponseCode::NXDomain, vec![soa()])), None);
        assert_eq!(empty_answer(&error_of(ResponseCode::ServFail, vec![])), None);
        assert_eq!(empty_answer(&NetError::Timeout), None);
    }

    #[test]
    fn hickorys_own_cname_chain_too_deep_is_no_proof() {
        // What the caching client returns when it stops following CNAMEs (caching_client.rs).
        let too_deep: NetError = NoRecords::new(
            Query::query(name("b.test."), RecordType::A),
            ResponseCode::NoError,
        )
        .into();
        assert_eq!(empty_answer(&too_deep), Some(EmptyAnswer::Bare));
    }

    fn temp() -> Found {
        Found::Failed(RouteFailure::Temporary {
            status: "4.4.3",
            text: "DNS A lookup of b.test failed: SERVFAIL".into(),
        })
    }

    fn both(v6: Found, v4: Found) -> AddressAnswers {
        AddressAnswers {
            v6: Some(v6),
            v4: Some(v4),
        }
    }

    fn implicit(answers: AddressAnswers, version: IpVersion) -> Result<Vec<SocketAddr>, RouteFailure> {
        addresses_from("b.test", 25, answers, AddressOf::ImplicitMx, version)
    }

    #[test]
    fn a_domain_with_proven_nodata_for_both_families_is_unroutable_for_good() {
        for version in [IpVersion::Any, IpVersion::V4, IpVersion::V6] {
            let e = implicit(both(Found::NoData, Found::NoData), version).unwrap_err();
            assert_eq!(
                (e.is_permanent(), e.status()),
                (true, "5.4.4"),
                "{version:?}: {e:?}"
            );
        }
        // An MX host without addresses is the domain's operator's slip, perhaps mended soon: deferred.
        let e = addresses_from(
            "mx.b.test",
            25,
            both(Found::NoData, Found::NoData),
            AddressOf::Host,
            IpVersion::Any,
        )
        .unwrap_err();
        assert_eq!((e.is_permanent(), e.status()), (false, "4.4.3"));
    }

    #[test]
    fn an_empty_answer_without_soa_or_a_family_not_asked_proves_nothing() {
        for answers in [
            both(Found::Empty, Found::NoData),
            both(Found::NoData, Found::Empty),
            both(Found::Empty, Found::Empty),
            // Answers that disagree (one says the name does not exist).
            both(Found::NxDomain, Found::NoData),
            // Only one family asked.
            AddressAnswers {
                v6: None,
                v4: Some(Found::NoData),
            },
        ] {
            let e = implicit(answers.clone(), IpVersion::Any).unwrap_err();
            assert_eq!(
                (e.is_permanent(), e.status()),
                (false, "4.4.3"),
                "{answers:?}: {e:?}"
            );
        }
    }

    #[test]
    fn addresses_only_of_the_family_left_out_defer_saying_so() {
        let v6: IpAddr = "2001:db8::25".parse().unwrap();
        let e = implicit(both(Found::Addresses(vec![v6]), Found::NoData), IpVersion::V4).unwrap_err();
        assert_eq!((e.is_permanent(), e.status()), (false, "4.4.4"), "{e:?}");
        assert!(e.text().contains("only IPv6 addresses"), "{e:?}");
        assert!(e.text().contains("ip_version = \"v4\""), "{e:?}");
        let v4: IpAddr = "192.0.2.25".parse().unwrap();
        let e = implicit(both(Found::NoData, Found::Addresses(vec![v4])), IpVersion::V6).unwrap_err();
        assert_eq!(e.status(), "4.4.4");
        assert!(e.text().contains("only IPv4 addresses"), "{e:?}");
        // The other family failing to answer decides nothing either.
        let e = implicit(both(temp(), Found::NoData), IpVersion::V4).unwrap_err();
        assert_eq!((e.is_permanent(), e.status()), (false, "4.4.3"));
    }

    #[test]
    fn a_failed_lookup_is_never_taken_for_nodata() {
        for answers in [
            both(temp(), Found::NoData),
            both(Found::NoData, temp()),
            AddressAnswers {
                v6: None,
                v4: Some(temp()),
            },
        ] {
            let e = implicit(answers, IpVersion::Any).unwrap_err();
            assert_eq!((e.is_permanent(), e.status()), (false, "4.4.3"), "{e:?}");
        }
    }

    #[test]
    fn any_address_wins_and_only_the_recipients_domain_can_be_nxdomain_for_good() {
        let v6: IpAddr = "::1".parse().unwrap();
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let r = implicit(both(Found::Addresses(vec![v6]), temp()), IpVersion::Any);
        assert_eq!(r.unwrap(), vec![SocketAddr::new(v6, 25)]);
        // NXDOMAIN for AAAA alone (a broken server): the A answer still counts.
        let r = implicit(both(Found::NxDomain, Found::Addresses(vec![v4])), IpVersion::Any);
        assert_eq!(r.unwrap(), vec![SocketAddr::new(v4, 25)]);
        let e = implicit(both(Found::NxDomain, Found::NxDomain), IpVersion::Any).unwrap_err();
        assert_eq!((e.is_permanent(), e.status()), (true, "5.1.2"));
        // The relay, a route's host or an MX host that does not exist: a mistake to mend, the mail waits.
        let e = addresses_from(
            "relay.b.test",
            25,
            both(Found::NxDomain, Found::NxDomain),
            AddressOf::Host,
            IpVersion::Any,
        )
        .unwrap_err();
        assert_eq!((e.is_permanent(), e.status()), (false, "4.4.3"));
        assert!(e.text().contains("does not exist"), "{e:?}");
    }
}

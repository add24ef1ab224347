//! Job records and reply values: how a message becomes jobs, the header of a job in the string form, and how
//! a job is read back from its header or its hash fields. The layout of both forms (and of every key) is in
//! `keys.rs`.

use std::collections::{BTreeMap, HashMap};

use redis::Value;
use serde::{Deserialize, Serialize};
use tern_core::{Envelope, JobId, MessageId};

use crate::QueueError;
use crate::model::{Job, JobState, RecipientState, RecipientStatus};

/// The intake record of a message: everything needed to (re)build its jobs, without the body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct IntakePayload {
    pub id: MessageId,
    pub created_ms: u64,
    pub due_ms: u64,
    pub envelope: Envelope,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub trace: Option<String>,
}

/// One job to create: its id, domain, due time, recipients and envelope (its header, [`job_header`], is made
/// of these and the message's sender, creation time, tags and trace).
#[derive(Clone, Debug)]
pub(crate) struct JobSpec {
    pub id: JobId,
    pub domain: String,
    pub due_ms: u64,
    pub recipients: usize,
    /// The recipients' addresses, newline-separated (the `ra:<i>` fields and the `queued` event).
    pub rcpt_list: String,
    /// The job's envelope (this job's recipients and the DSN parameters) as JSON.
    pub env_json: String,
}

/// The lower-cased sender address of a message (`""` for the null sender), as stored for listing.
pub(crate) fn sender_of(p: &IntakePayload) -> String {
    p.envelope
        .sender
        .mailbox()
        .map(|m| m.to_string().to_ascii_lowercase())
        .unwrap_or_default()
}

/// The tags of a message as stored (JSON).
pub(crate) fn tags_json(p: &IntakePayload) -> Result<String, QueueError> {
    serde_json::to_string(&p.tags).map_err(|e| QueueError::InvalidMessage(e.to_string()))
}

/// Splits a message into its jobs, one per destination domain (in [`Envelope::by_domain`] order, so a
/// re-drive rebuilds the same job ids).
pub(crate) fn job_specs(p: &IntakePayload) -> Result<Vec<JobSpec>, QueueError> {
    let mut out = Vec::new();
    for (i, (domain, recipients)) in p.envelope.by_domain().into_iter().enumerate() {
        let index = u32::try_from(i).map_err(|_| QueueError::InvalidMessage("too many domains".into()))?;
        let id = JobId::new(p.id, index);
        let mut env = p.envelope.clone();
        env.recipients = recipients;
        let env_json = serde_json::to_string(&env).map_err(|e| QueueError::InvalidMessage(e.to_string()))?;
        let rcpt_list = env
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        out.push(JobSpec {
            id,
            domain,
            due_ms: p.due_ms,
            recipients: env.recipients.len(),
            rcpt_list,
            env_json,
        });
    }
    Ok(out)
}

/// The text of a reply value (bulk or simple string, or a number).
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

/// The bytes of a bulk string reply.
pub(crate) fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// A reply as an integer.
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other).and_then(|s| s.parse().ok()),
    }
}

/// The items of an array reply (empty for nil).
pub(crate) fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// A flat field/value array (or map) as a map.
pub(crate) fn fields(v: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    match v {
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let (Some(k), Some(v)) = (text(k), text(v)) {
                    out.insert(k, v);
                }
            }
        }
        other => {
            for pair in items(other).chunks(2) {
                if let [k, v] = pair
                    && let (Some(k), Some(v)) = (text(k), text(v))
                {
                    out.insert(k, v);
                }
            }
        }
    }
    out
}

fn corrupt(what: &str, id: &str) -> QueueError {
    QueueError::Corrupt(format!("job {id}: bad or missing {what}"))
}

fn num<T: std::str::FromStr>(f: &HashMap<String, String>, name: &str, id: &str) -> Result<T, QueueError> {
    f.get(name)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(name, id))
}

/// The first `n` recipients of `envelope` with their state and last reply, as `at(i)` gives them (state `d`,
/// `f`, or anything else for pending).
fn recipient_states(
    envelope: &Envelope,
    n: usize,
    at: impl Fn(usize) -> (Option<String>, Option<String>),
) -> Vec<RecipientState> {
    envelope
        .recipients
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, rcpt)| {
            let (status, reply) = at(i);
            let status = match status.as_deref() {
                Some("d") => RecipientStatus::Delivered,
                Some("f") => RecipientStatus::Failed,
                _ => RecipientStatus::Pending,
            };
            RecipientState {
                recipient: rcpt.clone(),
                status,
                reply,
            }
        })
        .collect()
}

/// A job's tags from their stored JSON (absent or empty: none).
fn tags_of(json: Option<&str>, id: &str) -> Result<BTreeMap<String, String>, QueueError> {
    match json {
        Some(t) if !t.is_empty() => serde_json::from_str(t).map_err(|_| corrupt("tags", id)),
        _ => Ok(BTreeMap::new()),
    }
}

/// A job from its hash fields.
pub(crate) fn job_from_fields(f: &HashMap<String, String>) -> Result<Job, QueueError> {
    let raw_id = f.get("id").map(String::as_str).unwrap_or("?");
    let id: JobId = raw_id.parse().map_err(|_| corrupt("id", raw_id))?;
    let envelope: Envelope = serde_json::from_str(f.get("env").map(String::as_str).unwrap_or(""))
        .map_err(|_| corrupt("env", raw_id))?;
    let n: usize = num(f, "n", raw_id)?;
    let recipients = recipient_states(&envelope, n, |i| {
        (
            f.get(&format!("rs:{i}")).cloned(),
            f.get(&format!("rr:{i}")).cloned(),
        )
    });
    let state = f
        .get("state")
        .and_then(|s| s.parse::<JobState>().ok())
        .unwrap_or(JobState::Queued);
    let tags = tags_of(f.get("tags").map(String::as_str), raw_id)?;
    let nonempty = |name: &str| f.get(name).filter(|s| !s.is_empty()).cloned();
    Ok(Job {
        id,
        domain: f.get("dom").cloned().ok_or_else(|| corrupt("dom", raw_id))?,
        envelope,
        recipients,
        state,
        attempts: num(f, "att", raw_id)?,
        first_queued_ms: num(f, "first", raw_id)?,
        next_attempt_ms: num(f, "next", raw_id)?,
        last_error: nonempty("err"),
        tags,
        trace: nonempty("trace"),
        admin_bounce: f.get("bounce").is_some_and(|b| b == "1"),
        bounce_reason: nonempty("breason"),
        owner: if state == JobState::InFlight {
            nonempty("owner")
        } else {
            None
        },
        lease_until_ms: if state == JobState::InFlight {
            f.get("lease").and_then(|s| s.parse().ok())
        } else {
            None
        },
    })
}

/// Width of the claim token in a job header: a claim id is a ULID.
pub(crate) const TOKEN_WIDTH: usize = 26;

/// The header line of a new job's data `jd:<job id>` (layout in `keys.rs`): the form `q` (waiting,
/// never tried, no hash), an empty token, then tab-separated dom, n, first, next, sender, tags, trace,
/// solo, and the recipients. None of these holds a tab or a newline: addresses refuse control characters,
/// JSON escapes them, and a trace context with one is dropped when the message is prepared.
pub(crate) fn job_header(
    spec: &JobSpec,
    p: &IntakePayload,
    sender: &str,
    tags_json: &str,
    solo: bool,
) -> Vec<u8> {
    let mut h =
        Vec::with_capacity(96 + spec.domain.len() + sender.len() + tags_json.len() + spec.rcpt_list.len());
    h.push(b'q');
    h.extend_from_slice(&[b'-'; TOKEN_WIDTH]);
    for field in [
        spec.domain.as_str(),
        &spec.recipients.to_string(),
        &p.created_ms.to_string(),
        &spec.due_ms.to_string(),
        sender,
        tags_json,
        p.trace.as_deref().unwrap_or(""),
        if solo { "1" } else { "0" },
    ] {
        h.push(b'\t');
        h.extend_from_slice(field.as_bytes());
    }
    for r in spec.rcpt_list.split('\n') {
        h.push(b'\t');
        h.extend_from_slice(r.as_bytes());
    }
    h
}

/// A claimed job in the string form, read from its header line (`claim.lua` sends its id alone): never
/// tried, every recipient pending, its domain the claim's.
pub(crate) fn header_job(
    id: &[u8],
    header: &[u8],
    env_json: &[u8],
    domain: &str,
    owner: &str,
    lease_until_ms: u64,
) -> Result<Job, QueueError> {
    let raw_id = String::from_utf8_lossy(id);
    let fields: Vec<&[u8]> = header
        .get(TOKEN_WIDTH + 2..)
        .ok_or_else(|| corrupt("header", &raw_id))?
        .split(|c| *c == b'\t')
        .collect();
    let field = |i: usize| Value::BulkString(fields.get(i).map(|f| f.to_vec()).unwrap_or_default());
    // The compact list of `claimed_job`: att, n, first, tags, trace, next, id.
    let compact = [
        Value::BulkString(b"0".to_vec()),
        field(1),
        field(2),
        field(5),
        field(6),
        field(3),
        Value::BulkString(id.to_vec()),
    ];
    claimed_job(&compact, env_json, domain, owner, lease_until_ms)
}

/// A claimed job from `claim.lua`'s list of its fields (id, dom, n, att, first, next, err, tags, trace,
/// bounce, then state and reply per recipient, then an admin-bounced job's reason) and its envelope (JSON),
/// now in flight for `owner` until
/// `lease_until_ms`. A job never tried may come as the compact list (att, n, first, tags, trace, next, id;
/// see [`header_job`]): its domain is the claim's `domain`, and it has no error and every recipient pending
/// with no reply.
pub(crate) fn claimed_job(
    v: &[Value],
    env_json: &[u8],
    domain: &str,
    owner: &str,
    lease_until_ms: u64,
) -> Result<Job, QueueError> {
    let compact = v.len() == 7;
    let get = |i: usize| -> Option<String> {
        if !compact {
            return v.get(i).and_then(text);
        }
        let at = match i {
            0 => 6,
            1 => return Some(domain.to_string()),
            2 => 1,
            3 => 0,
            4 => 2,
            5 => 5,
            7 => 3,
            8 => 4,
            _ => return None,
        };
        v.get(at).and_then(text)
    };
    let raw_id = get(0).unwrap_or_else(|| "?".to_string());
    let id: JobId = raw_id.parse().map_err(|_| corrupt("id", &raw_id))?;
    let envelope: Envelope = serde_json::from_slice(env_json).map_err(|_| corrupt("env", &raw_id))?;
    let int = |i: usize, what: &str| -> Result<u64, QueueError> {
        get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt(what, &raw_id))
    };
    let n = int(2, "n")? as usize;
    let recipients = recipient_states(&envelope, n, |i| (get(10 + 2 * i), get(11 + 2 * i)));
    let tags = tags_of(get(7).as_deref(), &raw_id)?;
    let admin_bounce = get(9).as_deref() == Some("1");
    // After the recipients' fields.
    let bounce_reason = if admin_bounce {
        get(10 + 2 * n).filter(|s| !s.is_empty())
    } else {
        None
    };
    Ok(Job {
        id,
        domain: get(1).ok_or_else(|| corrupt("dom", &raw_id))?,
        envelope,
        recipients,
        state: JobState::InFlight,
        attempts: u32::try_from(int(3, "att")?).map_err(|_| corrupt("att", &raw_id))?,
        first_queued_ms: int(4, "first")?,
        next_attempt_ms: int(5, "next")?,
        last_error: get(6).filter(|s| !s.is_empty()),
        tags,
        trace: get(8).filter(|s| !s.is_empty()),
        admin_bounce,
        bounce_reason,
        owner: Some(owner.to_string()),
        lease_until_ms: Some(lease_until_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::{Recipient, ReversePath};

    #[test]
    fn a_message_splits_into_one_job_per_domain_and_round_trips() {
        let env = Envelope::new(
            ReversePath::Mailbox("S@a.test".parse().unwrap()),
            vec![
                Recipient::new("x@b.test".parse().unwrap()),
                Recipient::new("y@c.test".parse().unwrap()),
                Recipient::new("z@B.test".parse().unwrap()),
            ],
        );
        let p = IntakePayload {
            id: MessageId::new(),
            created_ms: 10,
            due_ms: 20,
            envelope: env,
            tags: [("t".to_string(), "1".to_string())].into(),
            trace: Some("tp".into()),
        };
        let specs = job_specs(&p).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].domain, "b.test");
        assert_eq!(specs[0].recipients, 2);
        assert_eq!(specs[1].id, JobId::new(p.id, 1));
        assert_eq!(specs[0].rcpt_list, "x@b.test\nz@B.test");
        // The fields a promoted job has, with the `id` and `env` read views add.
        let s = &specs[0];
        let mut map: HashMap<String, String> = [
            ("id", s.id.to_string()),
            ("dom", s.domain.clone()),
            ("env", s.env_json.clone()),
            ("n", s.recipients.to_string()),
            ("tags", tags_json(&p).unwrap()),
            ("att", "0".into()),
            ("first", p.created_ms.to_string()),
            ("next", s.due_ms.to_string()),
            ("sender", sender_of(&p)),
            ("state", "queued".into()),
            ("trace", "tp".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (r, a) in s.rcpt_list.split('\n').enumerate() {
            map.insert(format!("ra:{r}"), a.to_string());
            map.insert(format!("rs:{r}"), "p".to_string());
        }
        let job = job_from_fields(&map).unwrap();
        assert_eq!(job.id, specs[0].id);
        assert_eq!(job.recipients.len(), 2);
        assert_eq!(job.tags.get("t").map(String::as_str), Some("1"));
        assert_eq!(job.trace.as_deref(), Some("tp"));
        assert_eq!(job.next_attempt_ms, 20);
        assert!(!job.admin_bounce);
    }

    #[test]
    fn a_job_header_carries_the_whole_never_tried_job() {
        let env = Envelope::new(
            ReversePath::Mailbox("S@a.test".parse().unwrap()),
            vec![
                Recipient::new("x@b.test".parse().unwrap()),
                Recipient::new("y@b.test".parse().unwrap()),
            ],
        );
        let p = IntakePayload {
            id: MessageId::new(),
            created_ms: 10,
            due_ms: 20,
            envelope: env,
            tags: [("t".to_string(), "a\tb".to_string())].into(),
            trace: Some("tp".into()),
        };
        let spec = &job_specs(&p).unwrap()[0];
        let tags = tags_json(&p).unwrap();
        let header = job_header(spec, &p, &sender_of(&p), &tags, true);
        // Fixed-width form and token, then tab-separated fields; no newline (the header is one line).
        assert_eq!(
            &header[..1 + TOKEN_WIDTH],
            format!("q{}", "-".repeat(TOKEN_WIDTH)).as_bytes()
        );
        assert!(!header.contains(&b'\n'));
        let text = String::from_utf8(header.clone()).unwrap();
        let fields: Vec<&str> = text[TOKEN_WIDTH + 2..].split('\t').collect();
        assert_eq!(
            fields,
            [
                "b.test",
                "2",
                "10",
                "20",
                "s@a.test",
                tags.as_str(),
                "tp",
                "1",
                "x@b.test",
                "y@b.test"
            ]
        );
        let id = spec.id.to_string();
        let job = header_job(
            id.as_bytes(),
            &header,
            spec.env_json.as_bytes(),
            "b.test",
            "w1",
            99,
        )
        .unwrap();
        assert_eq!(job.id, spec.id);
        assert_eq!(job.domain, "b.test");
        assert_eq!(job.recipients.len(), 2);
        assert!(
            job.recipients
                .iter()
                .all(|r| r.status == RecipientStatus::Pending)
        );
        assert_eq!(job.tags.get("t").map(String::as_str), Some("a\tb"));
        assert_eq!(job.trace.as_deref(), Some("tp"));
        assert_eq!(
            (job.attempts, job.first_queued_ms, job.next_attempt_ms),
            (0, 10, 20)
        );
        assert_eq!(job.lease_until_ms, Some(99));
    }

    #[test]
    fn a_never_tried_job_reads_from_the_compact_claim_list() {
        let env = Envelope::new(
            ReversePath::Mailbox("s@a.test".parse().unwrap()),
            vec![
                Recipient::new("x@b.test".parse().unwrap()),
                Recipient::new("y@b.test".parse().unwrap()),
            ],
        );
        let id = JobId::new(MessageId::new(), 0);
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        // att, n, first, tags, trace (absent), next, id
        let v = vec![
            b("0"),
            b("2"),
            b("10"),
            b(r#"{"t":"1"}"#),
            Value::Nil,
            b("20"),
            b(&id.to_string()),
        ];
        let json = serde_json::to_vec(&env).unwrap();
        let job = claimed_job(&v, &json, "b.test", "w1", 99).unwrap();
        assert_eq!(job.id, id);
        assert_eq!(job.domain, "b.test");
        assert_eq!(
            (job.attempts, job.first_queued_ms, job.next_attempt_ms),
            (0, 10, 20)
        );
        assert_eq!(job.tags.get("t").map(String::as_str), Some("1"));
        assert_eq!((job.trace, job.last_error, job.admin_bounce), (None, None, false));
        assert_eq!(job.recipients.len(), 2);
        assert!(
            job.recipients
                .iter()
                .all(|r| r.status == RecipientStatus::Pending && r.reply.is_none())
        );
        assert_eq!((job.owner.as_deref(), job.lease_until_ms), (Some("w1"), Some(99)));
    }

    #[test]
    fn an_admin_bounced_job_reads_back_its_reason_in_both_forms() {
        let env = Envelope::new(
            ReversePath::Mailbox("s@a.test".parse().unwrap()),
            vec![Recipient::new("x@b.test".parse().unwrap())],
        );
        let id = JobId::new(MessageId::new(), 0);
        let json = serde_json::to_string(&env).unwrap();
        let mut map: HashMap<String, String> = [
            ("id", id.to_string()),
            ("dom", "b.test".into()),
            ("env", json.clone()),
            ("n", "1".into()),
            ("att", "2".into()),
            ("first", "1".into()),
            ("next", "2".into()),
            ("state", "held".into()),
            ("bounce", "1".into()),
            ("breason", "spam\trun".into()),
            ("ra:0", "x@b.test".into()),
            ("rs:0", "p".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let job = job_from_fields(&map).unwrap();
        assert_eq!(job.state, JobState::Held);
        assert!(job.admin_bounce);
        assert_eq!(job.bounce_reason.as_deref(), Some("spam\trun"));
        map.remove("breason");
        assert_eq!(job_from_fields(&map).unwrap().bounce_reason, None);

        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        // id, dom, n, att, first, next, err, tags, trace, bounce, rs:0, rr:0, the reason.
        let mut list = vec![
            b(&id.to_string()),
            b("b.test"),
            b("1"),
            b("2"),
            b("1"),
            b("2"),
            b("421 later"),
            b("{}"),
            Value::Nil,
            b("1"),
            b("p"),
            Value::Nil,
            b("operator says no"),
        ];
        let job = claimed_job(&list, json.as_bytes(), "#bounce", "w1", 9).unwrap();
        assert!(job.admin_bounce);
        assert_eq!(job.bounce_reason.as_deref(), Some("operator says no"));
        assert_eq!(job.recipients.len(), 1);
        list[12] = b("");
        let job = claimed_job(&list, json.as_bytes(), "#bounce", "w1", 9).unwrap();
        assert_eq!(job.bounce_reason, None);
    }
}

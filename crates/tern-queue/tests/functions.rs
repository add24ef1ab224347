//! The queue's Redis Functions library: loaded when the queue connects (on every master of a cluster), and
//! loaded again where a call finds it missing or older (`FUNCTION FLUSH`, a restart without persistence, a
//! failover, another tern version's library), the call then repeated once, with nothing lost or done twice.
// Test helpers: a failed Redis call is a failed test.
#![allow(clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use tern_queue::conformance::message;
use tern_queue::{Completion, Outcome, QueueError, RedisQueue};
use tern_testkit::redis::{RedisCluster, RedisServer};

const LEASE: Duration = Duration::from_secs(60);

/// Library names in a `redis-cli FUNCTION LIST` answer (one value per line).
fn libraries(list: &str) -> Vec<String> {
    let lines: Vec<&str> = list.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "library_name")
        .map(|w| w[1].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_list_shows_the_library_once_the_queue_connects() {
    let server = RedisServer::start().expect("start redis-server");
    assert!(libraries(&server.cli(&["FUNCTION", "LIST"]).expect("list")).is_empty());
    let _q = common::queue(common::single(&server.url(), "list")).await;
    let list = server.cli(&["FUNCTION", "LIST"]).expect("list");
    let name = RedisQueue::function_library();
    assert_eq!(libraries(&list), [name]);
    for operation in ["materialise", "claim", "complete", "extend", "read"] {
        assert!(
            list.contains(&format!("{name}_{operation}")),
            "{operation} missing from {list}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_when_the_functions_were_flushed_just_before() {
    let server = RedisServer::start().expect("start redis-server");
    let q = common::queue(common::single(&server.url(), "flush")).await;
    let flush = || {
        let reply = server.cli(&["FUNCTION", "FLUSH"]).expect("flush");
        assert_eq!(reply, "OK");
    };

    flush();
    let solo = q.enqueue(message(&["a@flush.test"])).await.expect("enqueue");
    flush();
    let batch = q
        .enqueue_batch(vec![
            message(&["b@flush.test"]),
            message(&["c@flush.test", "d@other-flush.test"]),
        ])
        .await;
    assert!(batch.iter().all(Result::is_ok), "{batch:?}");
    flush();
    let mut keyed = message(&["e@flush.test"]);
    keyed.idempotency_key = Some("key-1".into());
    q.enqueue(keyed).await.expect("enqueue through the intake path");
    flush();
    assert_eq!(q.counts().await.expect("counts").total, 5);
    flush();
    // Two domains, possibly in two shards: a claim each.
    let mut jobs = Vec::new();
    while let Some(c) = q.claim("w", 10, LEASE).await.expect("claim") {
        jobs.extend(c.jobs);
        flush();
    }
    assert_eq!(jobs.len(), 5);
    assert!(jobs.iter().any(|j| j.job.id.message == solo.message));
    flush();
    let first = &jobs[0].lease;
    q.extend("w", first, LEASE).await.expect("extend");
    flush();
    assert_eq!(
        q.complete("w", first, Outcome::delivered())
            .await
            .expect("complete"),
        Completion::Finished
    );
    flush();
    let rest: Vec<_> = jobs[1..]
        .iter()
        .map(|j| (j.lease.clone(), Outcome::delivered()))
        .collect();
    for done in q.complete_batch("w", rest).await {
        assert_eq!(done.expect("complete"), Completion::Finished);
    }
    flush();
    // A repeat is answered as one, and nothing was done twice.
    assert_eq!(
        q.complete("w", first, Outcome::delivered())
            .await
            .expect("repeat"),
        Completion::Gone
    );
    flush();
    assert_eq!(q.reap(tern_core::time::now_ms()).await.expect("reap"), 0);
    flush();
    assert_eq!(q.counts().await.expect("counts").total, 0);
    flush();
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.enqueued, stats.delivered), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_library_version_is_replaced_where_a_call_finds_it() {
    let server = RedisServer::start().expect("start redis-server");
    let q = common::queue(common::single(&server.url(), "older")).await;
    let ours = RedisQueue::function_library();

    // Another (older) tern version's library alone, as after a failover to a node that had only it.
    server.cli(&["FUNCTION", "FLUSH"]).expect("flush");
    let older = "#!lua name=tern_00000000\n\
                 redis.register_function('tern_00000000_claim', function() return false end)";
    assert_eq!(
        server.cli(&["FUNCTION", "LOAD", older]).expect("load"),
        "tern_00000000"
    );
    let r = q.enqueue(message(&["a@older.test"])).await.expect("enqueue");
    let c = q.claim("w", 10, LEASE).await.expect("claim").expect("work");
    assert_eq!(c.jobs[0].job.id.message, r.message);

    // A library under our own name but an older body, without the functions of this version.
    server.cli(&["FUNCTION", "FLUSH"]).expect("flush");
    let stale_body =
        format!("#!lua name={ours}\nredis.register_function('{ours}_unrelated', function() return 1 end)");
    server.cli(&["FUNCTION", "LOAD", &stale_body]).expect("load");
    assert_eq!(
        q.complete("w", &c.jobs[0].lease, Outcome::delivered())
            .await
            .expect("complete"),
        Completion::Finished
    );
    let list = server.cli(&["FUNCTION", "LIST"]).expect("list");
    assert!(list.contains(&format!("{ours}_complete")), "{list}");
    assert!(q.get_message(r.message).await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_queue_loads_its_library_beside_other_versions_and_removes_nothing() {
    let server = RedisServer::start().expect("start redis-server");
    let older =
        "#!lua name=tern_0badc0de\nredis.register_function('tern_0badc0de_claim', function() return 1 end)";
    let foreign =
        "#!lua name=someone_else\nredis.register_function('someone_else_f', function() return 1 end)";
    server.cli(&["FUNCTION", "LOAD", older]).expect("load");
    server.cli(&["FUNCTION", "LOAD", foreign]).expect("load");
    let _q = common::queue(common::single(&server.url(), "stale")).await;
    let mut names = libraries(&server.cli(&["FUNCTION", "LIST"]).expect("list"));
    names.sort();
    // A process of the older version may still be running (a rolling upgrade): its library stays.
    let mut want = vec![
        RedisQueue::function_library().to_string(),
        "someone_else".to_string(),
        "tern_0badc0de".to_string(),
    ];
    want.sort();
    assert_eq!(names, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_that_find_the_library_missing_at_once_all_succeed() {
    let server = RedisServer::start().expect("start redis-server");
    let mut opts = common::single(&server.url(), "burst");
    opts.default_domain_concurrency = 100;
    let q = common::queue(opts).await;
    for i in 0..40 {
        q.enqueue(message(&[&format!("r{i}@burst{}.test", i % 8)]))
            .await
            .expect("enqueue");
    }
    server.cli(&["FUNCTION", "FLUSH"]).expect("flush");
    let claims = futures::future::join_all((0..40).map(|i| {
        let q = Arc::clone(&q);
        async move { q.claim(&format!("w{i}"), 1, LEASE).await }
    }))
    .await;
    let mut taken = 0;
    for c in claims {
        if let Some(c) = c.expect("claim after a flush") {
            taken += c.jobs.len();
        }
    }
    // Each domain is claimed once per millisecond at most (it goes back behind the others), so not every
    // claim finds work; none fails and no job is taken twice.
    assert!(taken > 0);
    let counts = q.counts().await.expect("counts");
    assert_eq!(counts.in_flight as usize, taken);
    assert_eq!(counts.total, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_redis_refuses_for_memory_is_an_outage_and_the_call_works_after() {
    let server = RedisServer::start().expect("start redis-server");
    let q = common::queue(common::single(&server.url(), "oomload")).await;
    q.enqueue(message(&["a@oomload.test"])).await.expect("enqueue");
    server.cli(&["FUNCTION", "FLUSH"]).expect("flush");
    server
        .cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .expect("policy");
    server
        .cli(&["CONFIG", "SET", "maxmemory", "1"])
        .expect("maxmemory");
    match q.claim("w", 10, LEASE).await {
        Err(QueueError::Unavailable(_)) => {}
        other => panic!("expected Unavailable while the library cannot be loaded, got {other:?}"),
    }
    server
        .cli(&["CONFIG", "SET", "maxmemory", "0"])
        .expect("maxmemory");
    let c = q.claim("w", 10, LEASE).await.expect("claim").expect("work");
    assert_eq!(c.jobs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_every_master_gets_the_library_and_a_flushed_node_gets_it_again() {
    let cluster = RedisCluster::start(3).expect("start a 3-master cluster");
    let q = common::queue(common::cluster(&cluster.urls_comma(), "cluster")).await;
    let name = RedisQueue::function_library();
    for node in cluster.nodes() {
        let list = node.cli(&["FUNCTION", "LIST"]).expect("list");
        assert_eq!(libraries(&list), [name], "node {}", node.addr());
    }
    // Domains over every shard, so over every node.
    let domains: Vec<String> = (0..48).map(|i| format!("c{i}.test")).collect();
    for d in &domains {
        q.enqueue(message(&[&format!("a@{d}")])).await.expect("enqueue");
    }
    for node in cluster.nodes() {
        node.cli(&["FUNCTION", "FLUSH"]).expect("flush");
    }
    let mut done = 0;
    while let Some(c) = q.claim("w", 100, LEASE).await.expect("claim after a flush") {
        for j in &c.jobs {
            assert_eq!(
                q.complete("w", &j.lease, Outcome::delivered())
                    .await
                    .expect("complete"),
                Completion::Finished
            );
            done += 1;
        }
    }
    assert_eq!(done, domains.len());
    for node in cluster.nodes() {
        let list = node.cli(&["FUNCTION", "LIST"]).expect("list");
        assert_eq!(libraries(&list), [name], "node {} loaded it again", node.addr());
    }
    assert_eq!(q.counts().await.expect("counts").total, 0);
}

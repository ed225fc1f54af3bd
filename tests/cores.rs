//! Cores across a real cluster: in-process servers, each with its own
//! connection to one private backend. Placement, one owner per id, relaying
//! between instances in one order, failover after an owner dies, handover
//! on drain, restart after a panic, and fencing of a stale owner.
//!
//! Every scenario is one generic body run against Redis and against NATS
//! (`backend_tests!` at the bottom): both scalers face the same assertions.

mod support;

use scaled_sockets::{
    App, CommandError, Config, Context, Core, CoreContext, Data, Json, Scaler,
    cli::scaler_from_url,
    scaler::{LeaseOutcome, PutMode, PutOptions, Topic},
};
use scaled_sockets_test_harness::{NatsServer, RedisServer};
use serde::Deserialize;
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use support::{Raw, TestServer, eventually, http, test_config};

const API_KEY: &str = "cores-key";
/// Respawn bound of the contract (docs/protocol.md, demo handlers).
const RESPAWN_LIMIT: Duration = Duration::from_secs(15);

/// A counter; with `save`, it keeps its value in snapshots. Asks: `get`,
/// `boom` (panics), `publish` (publishes its value on channel `counter`),
/// `save` (saves a snapshot).
#[derive(Default)]
struct Counter {
    value: u64,
    save: bool,
}

#[derive(Deserialize)]
struct Saved {
    value: u64,
}

#[scaled_sockets::async_trait]
impl Core for Counter {
    async fn start(
        &mut self,
        _cx: &CoreContext,
        params: Data,
        snapshot: Option<Data>,
    ) -> Result<(), CommandError> {
        self.save = params.get() == "\"save\"";
        if let Some(snapshot) = snapshot {
            self.value = snapshot.parse::<Saved>()?.value;
        }
        Ok(())
    }

    async fn join(&mut self, _cx: &CoreContext, _m: &str, _d: Data) -> Result<Data, CommandError> {
        Data::json(&json!({ "value": self.value }))
    }

    async fn tell(&mut self, cx: &CoreContext, _m: &str, event: &str, _d: Data) {
        if event == "incr" {
            self.value += 1;
            let data = Data::json(&json!({ "value": self.value })).unwrap();
            if self.save {
                cx.save_snapshot(&data).await.unwrap();
            }
            cx.broadcast("value", &data).unwrap();
        }
    }

    async fn ask(
        &mut self,
        cx: &CoreContext,
        _m: &str,
        event: &str,
        _d: Data,
    ) -> Result<Data, CommandError> {
        let data = Data::json(&json!({ "value": self.value, "instance": cx.instance() }))?;
        match event {
            "get" => Ok(data),
            "boom" => panic!("boom"),
            "publish" => {
                cx.publish("counter", &data).await?;
                Ok(data)
            }
            "save" => {
                cx.save_snapshot(&data).await?;
                Ok(data)
            }
            _ => Err(CommandError::not_found("no such ask")),
        }
    }
}

#[derive(Deserialize)]
struct Spawn {
    kind: String,
    core: String,
    #[serde(default)]
    params: Option<Value>,
}

fn app(kinds: &[&str]) -> App {
    let mut app =
        support::demo_app().ask("spawn", |cx: Context, Json(s): Json<Spawn>| async move {
            let params = Data::json(&s.params.unwrap_or(Value::Null))?;
            let instance = cx.sockets.spawn_core(&s.kind, &s.core, &params).await?;
            Ok::<_, CommandError>(json!({ "core": s.core, "instance": instance }))
        });
    for kind in kinds {
        app = match *kind {
            "ticker" => app.core(kind, Ticker::default),
            _ => app.core(kind, Counter::default),
        };
    }
    // Tickers go to the instance with the largest id; the rest as usual.
    app.core_placement(|kind, candidates| match kind {
        "ticker" => candidates.iter().map(|c| c.instance.clone()).max(),
        _ => scaled_sockets::cores::least_loaded(kind, candidates),
    })
}

/// Broadcasts `tick` with a count every 50 ms.
#[derive(Default)]
struct Ticker {
    ticks: u64,
}

#[scaled_sockets::async_trait]
impl Core for Ticker {
    async fn join(&mut self, _cx: &CoreContext, _m: &str, _d: Data) -> Result<Data, CommandError> {
        Ok(Data::null())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }

    async fn tick(&mut self, cx: &CoreContext) {
        self.ticks += 1;
        let _ = cx.broadcast("tick", &Data::json(&self.ticks).unwrap());
    }

    async fn ask(
        &mut self,
        cx: &CoreContext,
        member: &str,
        _event: &str,
        _d: Data,
    ) -> Result<Data, CommandError> {
        Data::json(&json!({ "member": cx.members().contains(&member.to_owned()) }))
    }
}

fn config(id: &str) -> Config {
    Config {
        core_lease_ttl: Duration::from_millis(1500),
        core_scan_interval: Duration::from_millis(300),
        ask_timeout: Duration::from_secs(5),
        api_key: Some(API_KEY.into()),
        ..test_config(id)
    }
}

/// A private backend server the cluster's instances share.
trait Backend: Send + 'static {
    /// Starts a private server on a free loopback port.
    fn start() -> Self;
    /// The scaler URL that reaches it.
    fn scaler_url(&self) -> String;
}

impl Backend for RedisServer {
    fn start() -> Self {
        RedisServer::start()
    }
    fn scaler_url(&self) -> String {
        self.url()
    }
}

impl Backend for NatsServer {
    fn start() -> Self {
        NatsServer::start()
    }
    fn scaler_url(&self) -> String {
        self.url()
    }
}

struct Cluster {
    nodes: Vec<Option<TestServer>>,
    /// Kept alive (the server process stops when it drops); only its URL is used.
    _backend: Box<dyn Send>,
    url: String,
    prefix: String,
}

impl Cluster {
    /// Three instances `n1..=n3`; `kinds[i]` are the core kinds of instance i.
    async fn start<B: Backend>(kinds: [&[&str]; 3]) -> Self {
        let backend = tokio::task::block_in_place(B::start);
        // NATS takes at most 32 characters; the backend is private anyway.
        let prefix = format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let mut cluster = Self {
            nodes: Vec::new(),
            url: backend.scaler_url(),
            _backend: Box::new(backend),
            prefix,
        };
        for (i, kinds) in kinds.iter().enumerate() {
            let server = cluster.server(&format!("n{}", i + 1), kinds).await;
            cluster.nodes.push(Some(server));
        }
        cluster
    }

    async fn server(&self, id: &str, kinds: &[&str]) -> TestServer {
        let scaler = scaler_from_url(&self.url, &self.prefix)
            .await
            .expect("scaler");
        TestServer::start(config(id), scaler, app(kinds)).await
    }

    fn node(&self, i: usize) -> &TestServer {
        self.nodes[i].as_ref().expect("node running")
    }

    fn index_of(&self, instance: &str) -> usize {
        instance[1..].parse::<usize>().expect("instance nN") - 1
    }

    fn scaler(&self, i: usize) -> Arc<dyn Scaler> {
        self.node(i).sockets.scaler().clone()
    }
}

async fn join(client: &mut Raw, id: u64, core: &str) -> Value {
    client
        .call(json!({"type": "join", "id": id, "core": core, "data": {}}))
        .await
}

/// Joins until the core answers (it may be moving), within the respawn bound.
async fn rejoin(client: &mut Raw, first_id: u64, core: &str) -> Value {
    let deadline = tokio::time::Instant::now() + RESPAWN_LIMIT;
    let mut id = first_id;
    loop {
        let answer = join(client, id, core).await;
        if answer["type"] == "reply" {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "core `{core}` not back within {RESPAWN_LIMIT:?}: {answer}"
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ask(client: &mut Raw, id: u64, core: &str, event: &str) -> Value {
    client
        .call(json!({"type": "ask", "id": id, "core": core, "event": event, "data": null}))
        .await
}

/// Asks a core that stops meanwhile: its answer and the `left` push, which
/// may come in either order.
async fn ask_and_left(client: &mut Raw, id: u64, core: &str, event: &str) -> (Value, Value) {
    client
        .send(json!({"type": "ask", "id": id, "core": core, "event": event, "data": null}))
        .await;
    let (mut answer, mut left) = (None, None);
    while answer.is_none() || left.is_none() {
        let frame = client.recv().await;
        if frame["type"] == "left" {
            left = Some(frame);
        } else if frame["id"] == id {
            answer = Some(frame);
        }
    }
    (answer.unwrap(), left.unwrap())
}

fn incr(core: &str) -> Value {
    json!({"type": "tell", "core": core, "event": "incr", "data": null})
}

/// Waits until every instance's heartbeat reports its connection count.
async fn settle(cluster: &Cluster, connections: [u64; 3]) {
    let sockets = cluster.node(0).sockets.clone();
    eventually(Duration::from_secs(5), "heartbeats report the load", || {
        let sockets = sockets.clone();
        async move {
            let mut list = sockets.instances().await.unwrap();
            list.sort_by(|a, b| a.id.cmp(&b.id));
            list.iter().map(|i| i.connections).collect::<Vec<_>>() == connections
        }
    })
    .await;
}

async fn placement_picks_the_least_loaded_instance_offering_the_kind<B: Backend>() {
    // n3 offers no counter: it is never chosen, though it has no load.
    let cluster = Cluster::start::<B>([&["counter"], &["counter"], &["other"]]).await;
    let _a = (
        Raw::connect(&cluster.node(0).url()).await,
        Raw::connect(&cluster.node(0).url()).await,
    );
    let _b = Raw::connect(&cluster.node(1).url()).await;
    settle(&cluster, [2, 1, 0]).await;
    let sockets = cluster.node(2).sockets.clone();
    let first = sockets.spawn_core("counter", "c1", &Data::null()).await;
    assert_eq!(
        first.unwrap(),
        "n2",
        "n2 has the fewest connections + cores"
    );
    // Spawning a running id answers where it runs.
    let again = cluster
        .node(0)
        .sockets
        .spawn_core("counter", "c1", &Data::null())
        .await;
    assert_eq!(again.unwrap(), "n2");
    // n2 now hosts a core: load n1 = 2, n2 = 1 + 1: the tie goes to n1.
    eventually(Duration::from_secs(5), "n2 reports its core", || {
        let sockets = sockets.clone();
        async move {
            let list = sockets.instances().await.unwrap();
            list.iter().any(|i| i.id == "n2" && i.cores == 1)
        }
    })
    .await;
    let second = sockets.spawn_core("counter", "c2", &Data::null()).await;
    assert_eq!(second.unwrap(), "n1");
    let nowhere = sockets.spawn_core("nope", "c3", &Data::null()).await;
    assert_eq!(
        nowhere.unwrap_err().code,
        scaled_sockets::ErrorCode::Unavailable
    );

    // The cluster view lists the cores and the counts per instance.
    let (status, body) = http(
        "GET",
        &cluster.node(2).http("/api/cluster"),
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        view["cores"],
        json!([
            {"id": "c1", "kind": "counter", "instance": "n2"},
            {"id": "c2", "kind": "counter", "instance": "n1"},
        ])
    );
    let (_, metrics) = http("GET", &cluster.node(1).http("/metrics"), &[], "").await;
    assert!(
        metrics.contains("scaled_sockets_cores{instance=\"n2\"} 1"),
        "{metrics}"
    );
}

async fn concurrent_spawns_of_one_id_yield_one_owner<B: Backend>() {
    let cluster = Cluster::start::<B>([&["counter"]; 3]).await;
    let mut spawns = Vec::new();
    for round in 0..12 {
        let sockets = cluster.node(round % 3).sockets.clone();
        spawns.push(tokio::spawn(async move {
            sockets.spawn_core("counter", "race", &Data::null()).await
        }));
    }
    let mut owners = std::collections::BTreeSet::new();
    for spawn in spawns {
        owners.insert(spawn.await.unwrap().expect("spawned"));
    }
    assert_eq!(
        owners.len(),
        1,
        "every spawn answers the one owner: {owners:?}"
    );
    let cores = cluster.node(0).sockets.cores().await.unwrap();
    assert_eq!(cores.len(), 1, "{cores:?}");
    assert_eq!(&cores[0].instance, owners.first().unwrap());
    // Exactly one instance runs it.
    let (_, body) = http(
        "GET",
        &cluster.node(1).http("/api/cluster"),
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        "",
    )
    .await;
    eventually(
        Duration::from_secs(3),
        "one instance counts the core",
        || {
            let sockets = cluster.node(0).sockets.clone();
            async move {
                let list = sockets.instances().await.unwrap();
                list.iter().map(|i| i.cores).sum::<u64>() == 1
            }
        },
    )
    .await;
    assert!(body.contains("\"race\""), "{body}");
}

async fn members_on_three_instances_see_every_increment_in_one_order<B: Backend>() {
    let cluster = Cluster::start::<B>([&["counter"]; 3]).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let (mut client, _) = Raw::connect(&cluster.node(i).url()).await;
        if i == 0 {
            let spawned = client
                .call(json!({"type": "ask", "id": 1, "event": "spawn",
                    "data": {"kind": "counter", "core": "room"}}))
                .await;
            assert_eq!(spawned["data"]["core"], "room", "{spawned}");
        }
        assert_eq!(
            join(&mut client, 2, "room").await["data"],
            json!({"value": 0})
        );
        clients.push(client);
    }
    const EACH: u64 = 20;
    for client in &mut clients {
        for _ in 0..EACH {
            client.send(incr("room")).await;
        }
    }
    let total = EACH * 3;
    for client in &mut clients {
        let mut seen = Vec::new();
        while seen.len() < total as usize {
            let frame = client.recv_type("tell").await;
            assert_eq!(frame["core"], "room", "{frame}");
            assert_eq!(frame["event"], "value", "{frame}");
            seen.push(frame["data"]["value"].as_u64().unwrap());
        }
        assert_eq!(seen, (1..=total).collect::<Vec<_>>(), "one order, no gap");
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let answer = ask(client, 10, "room", "get").await;
        assert_eq!(answer["data"]["value"], total, "{answer}");
        let instance = answer["data"]["instance"].as_str().unwrap().to_owned();
        assert!(
            ["n1", "n2", "n3"].contains(&instance.as_str()),
            "asked from n{}",
            i + 1
        );
    }
    // Leaving: no more frames for that member.
    let left = clients[1]
        .call(json!({"type": "leave", "id": 11, "core": "room"}))
        .await;
    assert_eq!(left["type"], "reply", "{left}");
    clients[0].send(incr("room")).await;
    assert_eq!(
        clients[2].recv_type("tell").await["data"]["value"],
        total + 1
    );
    clients[1].quiet(Duration::from_millis(500)).await;
    let again = clients[1]
        .call(json!({"type": "leave", "id": 12, "core": "room"}))
        .await;
    assert_eq!(again["code"], "not_found", "{again}");
}

async fn a_dead_owners_core_is_respawned_on_a_survivor_and_members_rejoin<B: Backend>() {
    let mut cluster = Cluster::start::<B>([&["counter"]; 3]).await;
    let owner = cluster
        .node(0)
        .sockets
        .spawn_core("counter", "x", &Data::null())
        .await;
    let owner = owner.unwrap();
    let dead = cluster.index_of(&owner);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != dead).collect();
    let mut members = Vec::new();
    for &i in &survivors {
        let (mut client, _) = Raw::connect(&cluster.node(i).url()).await;
        join(&mut client, 1, "x").await;
        members.push(client);
    }
    for client in &mut members {
        client.send(incr("x")).await;
    }
    for client in &mut members {
        client.recv_type("tell").await;
        client.recv_type("tell").await;
    }
    // Dropped without draining: its leases are not released, they expire.
    let started = tokio::time::Instant::now();
    drop(cluster.nodes[dead].take());
    for client in &mut members {
        let left = client.recv_type("left").await;
        assert_eq!(
            left,
            json!({"type": "left", "core": "x", "reason": "moved", "rejoin": true})
        );
    }
    for client in &mut members {
        let answer = rejoin(client, 10, "x").await;
        assert_eq!(
            answer["data"],
            json!({"value": 0}),
            "fresh state: no snapshot"
        );
    }
    let answer = ask(&mut members[0], 100, "x", "get").await;
    let host = answer["data"]["instance"].as_str().unwrap();
    assert_ne!(host, owner, "{answer}");
    assert!(started.elapsed() < RESPAWN_LIMIT);
    // The respawned core relays as before.
    members[1].send(incr("x")).await;
    for client in &mut members {
        assert_eq!(client.recv_type("tell").await["data"]["value"], 1);
    }
    let (_, metrics) = http(
        "GET",
        &cluster.node(cluster.index_of(host)).http("/metrics"),
        &[],
        "",
    )
    .await;
    assert!(
        metrics.contains("scaled_sockets_core_respawns_total{"),
        "{metrics}"
    );
}

async fn a_draining_instance_hands_its_core_over_with_its_snapshot<B: Backend>() {
    let mut cluster = Cluster::start::<B>([&["counter"]; 3]).await;
    let sockets = cluster.node(0).sockets.clone();
    let owner = sockets
        .spawn_core("counter", "kept", &Data::json("save").unwrap())
        .await
        .unwrap();
    let draining = cluster.index_of(&owner);
    let other = (draining + 1) % 3;
    let (mut client, _) = Raw::connect(&cluster.node(other).url()).await;
    join(&mut client, 1, "kept").await;
    for _ in 0..5 {
        client.send(incr("kept")).await;
    }
    for _ in 0..5 {
        client.recv_type("tell").await;
    }
    cluster.nodes[draining].take().unwrap().shutdown().await;
    let left = client.recv_type("left").await;
    assert_eq!(left["rejoin"], true, "{left}");
    let answer = rejoin(&mut client, 10, "kept").await;
    assert_eq!(
        answer["data"],
        json!({"value": 5}),
        "the snapshot moved along"
    );
    let got = ask(&mut client, 50, "kept", "get").await;
    assert_ne!(got["data"]["instance"], owner.as_str(), "{got}");
    let cores = cluster.node(other).sockets.cores().await.unwrap();
    assert_eq!(cores.len(), 1);
    assert_ne!(cores[0].instance, owner);
}

async fn a_panicking_core_restarts_from_its_last_snapshot<B: Backend>() {
    let cluster = Cluster::start::<B>([&["counter"]; 3]).await;
    let owner = cluster
        .node(0)
        .sockets
        .spawn_core("counter", "fragile", &Data::json("save").unwrap())
        .await
        .unwrap();
    let (mut near, _) = Raw::connect(&cluster.node(cluster.index_of(&owner)).url()).await;
    let far_node = (cluster.index_of(&owner) + 1) % 3;
    let (mut far, _) = Raw::connect(&cluster.node(far_node).url()).await;
    join(&mut near, 1, "fragile").await;
    join(&mut far, 1, "fragile").await;
    for _ in 0..3 {
        far.send(incr("fragile")).await;
    }
    for _ in 0..3 {
        near.recv_type("tell").await;
    }
    // The far instance hands the relayed answer to the waiting ask and
    // pushes `left` itself: the client may see them in either order.
    let (boom, far_left) = ask_and_left(&mut far, 2, "fragile", "boom").await;
    assert_eq!(boom["code"], "internal", "{boom}");
    let near_left = near.recv_type("left").await;
    for (client, left) in [(&mut near, near_left), (&mut far, far_left)] {
        assert_eq!(
            left,
            json!({"type": "left", "core": "fragile", "reason": "restarted", "rejoin": true})
        );
        let answer = join(client, 3, "fragile").await;
        assert_eq!(answer["data"], json!({"value": 3}), "{answer}");
    }
    let got = ask(&mut far, 4, "fragile", "get").await;
    assert_eq!(
        got["data"]["instance"],
        owner.as_str(),
        "restarted in place"
    );
    let (_, metrics) = http(
        "GET",
        &cluster.node(cluster.index_of(&owner)).http("/metrics"),
        &[],
        "",
    )
    .await;
    assert!(metrics.contains(&format!(
        "scaled_sockets_core_restarts_total{{instance=\"{owner}\"}} 1"
    )));
}

async fn a_stale_owner_cannot_publish_save_or_reach_members<B: Backend>() {
    let cluster = Cluster::start::<B>([&["counter"]; 3]).await;
    let sockets = cluster.node(0).sockets.clone();
    let owner = sockets
        .spawn_core("counter", "s1", &Data::null())
        .await
        .unwrap();
    let idx = cluster.index_of(&owner);
    let scaler = cluster.scaler(idx);
    let (mut member, _) = Raw::connect(&cluster.node(idx).url()).await;
    join(&mut member, 1, "s1").await;
    let far_idx = (idx + 1) % 3;
    let (mut far, welcome) = Raw::connect(&cluster.node(far_idx).url()).await;
    join(&mut far, 1, "s1").await;

    // A fenced write from this tenure is accepted.
    assert_eq!(ask(&mut member, 2, "s1", "save").await["type"], "reply");

    // A frame relayed with an older token than the member's is dropped;
    // one with the current token is delivered.
    let lease = scaler.lease("core/s1").await.unwrap().unwrap();
    let frame = |value: u64| {
        json!({"type": "tell", "core": "s1", "event": "value", "data": {"value": value}})
            .to_string()
    };
    let deliver = |token: u64, value: u64| {
        json!({"core": {"body": {"deliver": {"core": "s1", "token": token,
            "clients": [welcome["client"]], "frame": frame(value)}}}})
        .to_string()
    };
    let inbox = Topic::instance(format!("n{}", far_idx + 1));
    scaler
        .send(&inbox, deliver(lease.token - 1, 666).into())
        .await
        .unwrap();
    scaler
        .send(&inbox, deliver(lease.token, 7).into())
        .await
        .unwrap();
    let got = far.recv_type("tell").await;
    assert_eq!(
        got["data"]["value"], 7,
        "the stale frame was dropped: {got}"
    );

    // Another owner takes the lease over (as after a partition) and writes.
    assert!(
        scaler
            .release_lease("core/s1", &owner, lease.token)
            .await
            .unwrap()
    );
    let LeaseOutcome::Acquired { token } = scaler
        .acquire_lease("core/s1", "intruder", Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("lease not taken over");
    };
    assert!(token > lease.token);
    scaler
        .kv_put(
            "cores/snap/s1",
            bytes::Bytes::from_static(b"{}"),
            &PutOptions::mode(PutMode::Fenced(token)),
        )
        .await
        .unwrap();
    // The stale owner's publish is refused, and it stops the core at once.
    let (published, left) = ask_and_left(&mut member, 3, "s1", "publish").await;
    assert_eq!(published["code"], "unavailable", "{published}");
    assert_eq!(left["rejoin"], true, "{left}");
    let left = far.recv_type("left").await;
    assert_eq!(left["rejoin"], true, "{left}");
    // Asks now go to the lease holder, which is not a live instance.
    let answer = ask(&mut far, 4, "s1", "get").await;
    assert_eq!(answer["code"], "unavailable", "{answer}");

    // A stale save is refused by the fence.
    let owner2 = sockets
        .spawn_core("counter", "s2", &Data::null())
        .await
        .unwrap();
    let idx2 = cluster.index_of(&owner2);
    let scaler2 = cluster.scaler(idx2);
    let (mut member2, _) = Raw::connect(&cluster.node(idx2).url()).await;
    join(&mut member2, 1, "s2").await;
    let lease2 = scaler2.lease("core/s2").await.unwrap().unwrap();
    scaler2
        .kv_put(
            "cores/snap/s2",
            bytes::Bytes::from_static(b"{}"),
            &PutOptions::mode(PutMode::Fenced(lease2.token + 1)),
        )
        .await
        .unwrap();
    let (saved, left) = ask_and_left(&mut member2, 2, "s2", "save").await;
    assert_eq!(saved["code"], "unavailable", "{saved}");
    assert_eq!(left["core"], "s2");
}

async fn a_stopped_core_tells_its_members_and_is_forgotten<B: Backend>() {
    let cluster = Cluster::start::<B>([&["counter"]; 3]).await;
    let owner = cluster
        .node(0)
        .sockets
        .spawn_core("counter", "gone", &Data::json("save").unwrap())
        .await
        .unwrap();
    let mut members = Vec::new();
    for i in 0..3 {
        let (mut client, _) = Raw::connect(&cluster.node(i).url()).await;
        join(&mut client, 1, "gone").await;
        members.push(client);
    }
    members[0].send(incr("gone")).await;
    for client in &mut members {
        client.recv_type("tell").await;
    }
    // Stopped from an instance that does not host it.
    let from = (cluster.index_of(&owner) + 1) % 3;
    assert!(cluster.node(from).sockets.stop_core("gone").await.unwrap());
    for client in &mut members {
        let left = client.recv_type("left").await;
        assert_eq!(
            left,
            json!({"type": "left", "core": "gone", "reason": "stopped", "rejoin": false})
        );
        assert_eq!(join(client, 2, "gone").await["code"], "not_found");
    }
    assert!(cluster.node(0).sockets.cores().await.unwrap().is_empty());
    assert!(!cluster.node(1).sockets.stop_core("gone").await.unwrap());
    // Spawned again, it starts afresh: its snapshot went with it.
    let sockets = &cluster.node(2).sockets;
    sockets
        .spawn_core("counter", "gone", &Data::json("save").unwrap())
        .await
        .unwrap();
    assert_eq!(
        join(&mut members[1], 3, "gone").await["data"],
        json!({"value": 0})
    );
}

async fn custom_placement_ticks_and_asks_from_non_members<B: Backend>() {
    let cluster = Cluster::start::<B>([&["counter", "ticker"]; 3]).await;
    let owner = cluster
        .node(0)
        .sockets
        .spawn_core("ticker", "t", &Data::null())
        .await;
    assert_eq!(owner.unwrap(), "n3", "the app's placement chose");
    let (mut member, _) = Raw::connect(&cluster.node(0).url()).await;
    join(&mut member, 1, "t").await;
    let mut last = 0;
    for _ in 0..3 {
        let tick = member.recv_type("tell").await;
        assert_eq!(tick["event"], "tick", "{tick}");
        let n = tick["data"].as_u64().unwrap();
        assert!(n > last, "ticks in order: {n} after {last}");
        last = n;
    }
    // A client that did not join may ask (and the core can tell it is not
    // a member); it gets no ticks.
    let (mut stranger, _) = Raw::connect(&cluster.node(1).url()).await;
    let answer = ask(&mut stranger, 1, "t", "who").await;
    assert_eq!(answer["data"], json!({"member": false}), "{answer}");
    assert_eq!(
        ask(&mut member, 2, "t", "who").await["data"],
        json!({"member": true})
    );
    let missing = ask(&mut stranger, 2, "nope", "who").await;
    assert_eq!(missing["code"], "not_found", "{missing}");
    stranger.quiet(Duration::from_millis(300)).await;
}

/// One `#[tokio::test]` per scenario, calling the generic body with the
/// given backend.
macro_rules! backend_tests {
    ($module:ident: $backend:ident { $($test:ident),* $(,)? }) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<scaled_sockets_test_harness::$backend>().await;
                }
            )*
        }
    };
}

backend_tests!(redis: RedisServer {
    placement_picks_the_least_loaded_instance_offering_the_kind,
    concurrent_spawns_of_one_id_yield_one_owner,
    members_on_three_instances_see_every_increment_in_one_order,
    a_dead_owners_core_is_respawned_on_a_survivor_and_members_rejoin,
    a_draining_instance_hands_its_core_over_with_its_snapshot,
    a_panicking_core_restarts_from_its_last_snapshot,
    a_stale_owner_cannot_publish_save_or_reach_members,
    a_stopped_core_tells_its_members_and_is_forgotten,
    custom_placement_ticks_and_asks_from_non_members,
});

backend_tests!(nats: NatsServer {
    placement_picks_the_least_loaded_instance_offering_the_kind,
    concurrent_spawns_of_one_id_yield_one_owner,
    members_on_three_instances_see_every_increment_in_one_order,
    a_dead_owners_core_is_respawned_on_a_survivor_and_members_rejoin,
    a_draining_instance_hands_its_core_over_with_its_snapshot,
    a_panicking_core_restarts_from_its_last_snapshot,
    a_stale_owner_cannot_publish_save_or_reach_members,
    a_stopped_core_tells_its_members_and_is_forgotten,
    custom_placement_ticks_and_asks_from_non_members,
});

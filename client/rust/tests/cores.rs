//! The client keeps its core memberships by itself, against real in-process
//! server instances sharing one private Redis: after the core's owner dies
//! (the core is respawned on a survivor) and after the client's own instance
//! goes away (it reconnects to another one).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scaled_sockets::{
    AllowAnonymous, App, CommandError, Config, Core, CoreContext, Data, Server, Sockets,
    cli::scaler_from_url,
};
use scaled_sockets_client::{Client, Event, Events};
use scaled_sockets_test_harness::RedisServer;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The server's respawn bound, plus the client's retry delay and slack.
const REJOIN_WAIT: Duration = Duration::from_secs(25);
const WAIT: Duration = Duration::from_secs(10);

/// A counter: `join` answers its value, the tell `incr` increments it and
/// broadcasts `value` to the members, the ask `get` answers its value and
/// the instance it runs on.
#[derive(Default)]
struct Counter {
    value: u64,
}

#[scaled_sockets::async_trait]
impl Core for Counter {
    async fn join(&mut self, _cx: &CoreContext, _m: &str, _d: Data) -> Result<Data, CommandError> {
        Data::json(&json!({ "value": self.value }))
    }

    async fn tell(&mut self, cx: &CoreContext, _m: &str, event: &str, _d: Data) {
        if event == "incr" {
            self.value += 1;
            let data = Data::json(&json!({ "value": self.value })).unwrap();
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
        match event {
            "get" => Data::json(&json!({ "value": self.value, "instance": cx.instance() })),
            _ => Err(CommandError::not_found("no such ask")),
        }
    }
}

/// One server instance in this process. Dropping it aborts it without a
/// drain: its leases are not released, they expire.
struct Node {
    addr: SocketAddr,
    sockets: Sockets,
    _stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Node {
    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Cluster {
    nodes: Vec<Option<Node>>,
    _redis: RedisServer,
}

impl Cluster {
    /// Instances `n1..=n3`, each offering `counter`.
    async fn start() -> Cluster {
        let redis = tokio::task::block_in_place(RedisServer::start);
        let prefix = format!("c{}", uuid::Uuid::new_v4().simple());
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let scaler = scaler_from_url(&redis.url(), &prefix)
                .await
                .expect("redis scaler");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let config = Config {
                instance_id: format!("n{i}"),
                advertised_address: addr.to_string(),
                heartbeat_interval: Duration::from_millis(200),
                core_lease_ttl: Duration::from_millis(1500),
                core_scan_interval: Duration::from_millis(300),
                ask_timeout: Duration::from_secs(5),
                ..Config::default()
            };
            let app = App::new()
                .authenticator(AllowAnonymous)
                .core("counter", Counter::default);
            let server = Server::start(config, scaler, app)
                .await
                .expect("start server");
            let sockets = server.sockets();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                server
                    .serve(listener, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serve");
            });
            nodes.push(Some(Node {
                addr,
                sockets,
                _stop: stop,
                task,
            }));
        }
        Cluster {
            nodes,
            _redis: redis,
        }
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node running")
    }

    fn index_of(&self, instance: &str) -> usize {
        instance[1..].parse::<usize>().expect("instance nN") - 1
    }

    /// Spawns `counter` core `id`; returns the index of its owner.
    async fn spawn(&self, id: &str) -> usize {
        let owner = self
            .node(0)
            .sockets
            .spawn_core("counter", id, &Data::null())
            .await
            .expect("spawn");
        self.index_of(&owner)
    }
}

/// A TCP relay standing in for a load balancer: new connections go to the
/// current target; `switch` points it elsewhere and cuts the live ones (as
/// the death of the instance behind them would).
struct Balancer {
    url: String,
    target: Arc<Mutex<SocketAddr>>,
    pipes: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Balancer {
    async fn start(target: SocketAddr) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        let target = Arc::new(Mutex::new(target));
        let pipes = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (target, pipes) = (target.clone(), pipes.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let to = *target.lock().unwrap();
                    let pipe = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(to).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    pipes.lock().unwrap().push(pipe);
                }
            }
        });
        Balancer {
            url,
            target,
            pipes,
            accept,
        }
    }

    fn switch(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accept.abort();
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }
}

async fn client(url: &str) -> Client {
    Client::builder(url)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .connect()
        .await
        .expect("connect")
}

/// The next event matching `pick`, skipping others.
async fn next_event<T>(
    events: &mut Events,
    wait: Duration,
    pick: impl Fn(Event) -> Option<T>,
) -> T {
    use futures_util::StreamExt;
    tokio::time::timeout(wait, async {
        loop {
            let event = events.next().await.expect("event stream open");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    })
    .await
    .expect("the expected event in time")
}

async fn get(client: &Client, core: &str) -> Value {
    let data = client
        .ask_core(core, "get", &json!(null))
        .await
        .expect("get");
    serde_json::from_str(data.get()).unwrap()
}

/// Increments `core` and returns the `value` broadcast it gets back: only
/// members receive it.
async fn incr(client: &Client, events: &mut Events, core: &str) -> u64 {
    client.tell_core(core, "incr", &json!(null)).await.unwrap();
    next_event(events, WAIT, |e| match e {
        Event::Tell {
            event,
            data,
            core: Some(from),
            ..
        } if event == "value" && from == core => {
            let v: Value = serde_json::from_str(data.get()).unwrap();
            v["value"].as_u64()
        }
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rejoins_by_itself_when_the_owner_dies() {
    let mut cluster = Cluster::start().await;
    let owner = cluster.spawn("x").await;
    let home = (owner + 1) % 3;
    let client = client(&cluster.node(home).url()).await;
    let mut events = client.events();
    let joined = client.join("x", &json!({"name": "ann"})).await.unwrap();
    assert_eq!(joined.get(), r#"{"value":0}"#);
    assert_eq!(incr(&client, &mut events, "x").await, 1);

    // Dropped without a drain: the core is respawned on a survivor.
    drop(cluster.nodes[owner].take());
    let (reason, rejoin) = next_event(&mut events, WAIT, |e| match e {
        Event::Left {
            core,
            reason,
            rejoin,
        } if core == "x" => Some((reason, rejoin)),
        _ => None,
    })
    .await;
    assert!(rejoin, "left x: {reason}");
    let data = next_event(&mut events, REJOIN_WAIT, |e| match e {
        Event::Rejoined { core, data } if core == "x" => Some(data),
        Event::RejoinFailed { core, error } => panic!("rejoin of {core} failed: {error}"),
        _ => None,
    })
    .await;
    assert_eq!(data.get(), r#"{"value":0}"#, "fresh state: no snapshot");

    // No app code involved: the client is a member of the new core.
    let answer = get(&client, "x").await;
    assert_ne!(answer["instance"], format!("n{}", owner + 1), "{answer}");
    assert_eq!(incr(&client, &mut events, "x").await, 1);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rejoins_after_reconnecting_to_another_instance() {
    let mut cluster = Cluster::start().await;
    let owner = cluster.spawn("y").await;
    let home = (owner + 1) % 3;
    let elsewhere = (owner + 2) % 3;
    let balancer = Balancer::start(cluster.node(home).addr).await;
    let client = client(&balancer.url).await;
    let mut events = client.events();
    client.join("y", &json!(null)).await.unwrap();
    assert_eq!(incr(&client, &mut events, "y").await, 1);

    // The client's instance goes away; the balancer sends it elsewhere.
    drop(cluster.nodes[home].take());
    balancer.switch(cluster.node(elsewhere).addr);
    let instance = next_event(&mut events, WAIT, |e| match e {
        Event::Connected { instance, .. } => Some(instance),
        _ => None,
    })
    .await;
    assert_eq!(instance, format!("n{}", elsewhere + 1));
    let data = next_event(&mut events, REJOIN_WAIT, |e| match e {
        Event::Rejoined { core, data } if core == "y" => Some(data),
        Event::RejoinFailed { core, error } => panic!("rejoin of {core} failed: {error}"),
        _ => None,
    })
    .await;
    assert_eq!(data.get(), r#"{"value":1}"#, "the same core, still running");
    // A member again: broadcasts reach it.
    assert_eq!(incr(&client, &mut events, "y").await, 2);
    assert_eq!(
        get(&client, "y").await["instance"],
        format!("n{}", owner + 1)
    );

    // After `leave`, a reconnect does not join it again.
    client.leave("y").await.unwrap();
    balancer.switch(cluster.node(owner).addr);
    next_event(&mut events, WAIT, |e| match e {
        Event::Connected { .. } => Some(()),
        _ => None,
    })
    .await;
    // Not a member: the broadcast of an increment made by another client
    // does not arrive.
    let observer = self::client(&cluster.node(owner).url()).await;
    let mut observer_events = observer.events();
    observer.join("y", &json!(null)).await.unwrap();
    assert_eq!(incr(&observer, &mut observer_events, "y").await, 3);
    let stray = tokio::time::timeout(Duration::from_millis(500), async {
        next_event(&mut events, WAIT, |e| match e {
            Event::Tell { core: Some(c), .. } | Event::Rejoined { core: c, .. } if c == "y" => {
                Some(())
            }
            _ => None,
        })
        .await
    })
    .await;
    assert!(stray.is_err(), "the client left y but still hears from it");
    observer.close().await;
    client.close().await;
}

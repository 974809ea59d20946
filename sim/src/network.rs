//! The simulated network: per-message delay, drop and duplication, partitions between nodes, and
//! nodes that are down; every choice comes from the one seeded RNG, every delivery is traced.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use kvnode::error::Error;
use kvnode::http::Node;
use kvnode::http::peer::handle;
use kvnode::membership::Membership;
use kvnode::rpc::{self, RequestBody, ResponseBody, RpcRequest, RpcResponse};
use kvnode::transport::{self, BoxFuture, Peers};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How the links behave now; the fault schedule changes it.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Chance that one message (request or answer) is lost.
    pub drop: f64,
    /// Chance that a request is delivered twice.
    pub duplicate: f64,
    /// Largest one-way delay in milliseconds (each message draws 1..=this).
    pub max_delay_ms: u64,
    /// Node pairs (smaller index first) that cannot reach each other.
    pub cut: BTreeSet<(usize, usize)>,
}

/// The nodes, the links between them, the RNG and the trace of one simulation.
pub struct Network {
    state: Mutex<State>,
}

struct State {
    start: tokio::time::Instant,
    rng: StdRng,
    faults: Faults,
    nodes: Vec<Option<Arc<Node>>>,
    trace: Vec<String>,
}

impl State {
    fn log(&mut self, event: String) {
        let ms = self.start.elapsed().as_millis();
        self.trace.push(format!("{ms:>7} {event}"));
    }
}

/// What happens to one message.
enum Fate {
    Lost,
    Refused,
    After(Duration),
}

impl Network {
    /// A network of `nodes` nodes (none up yet) whose choices follow `seed`.
    pub fn new(seed: u64, nodes: usize) -> Arc<Self> {
        Arc::new(Network {
            state: Mutex::new(State {
                start: tokio::time::Instant::now(),
                rng: StdRng::seed_from_u64(seed),
                faults: Faults {
                    max_delay_ms: 5,
                    ..Faults::default()
                },
                nodes: vec![None; nodes],
                trace: Vec::new(),
            }),
        })
    }

    /// Runs `choose` with the simulation's RNG (the workload and the fault schedule draw from it).
    pub fn with_rng<T>(&self, choose: impl FnOnce(&mut StdRng) -> T) -> T {
        choose(&mut self.state.lock().rng)
    }

    /// Appends `event` to the trace, stamped with the simulated time.
    pub fn trace(&self, event: String) {
        self.state.lock().log(event);
    }

    /// The trace so far.
    pub fn take_trace(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().trace)
    }

    /// Changes the link behaviour.
    pub fn set_faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.state.lock().faults);
    }

    /// Marks node `index` up as `node`, or down with `None`.
    pub fn set_node(&self, index: usize, node: Option<Arc<Node>>) {
        self.state.lock().nodes[index] = node;
    }

    /// Node `index` when it is up.
    pub fn node(&self, index: usize) -> Option<Arc<Node>> {
        self.state.lock().nodes[index].clone()
    }

    fn fate(&self, from: usize, to: usize, what: &str) -> Fate {
        let mut state = self.state.lock();
        let State {
            rng, faults, nodes, ..
        } = &mut *state;
        let fate = if nodes[from].is_none() || nodes[to].is_none() {
            Fate::Refused
        } else if faults.cut.contains(&(from.min(to), from.max(to))) || rng.random_bool(faults.drop)
        {
            Fate::Lost
        } else {
            Fate::After(Duration::from_millis(
                rng.random_range(1..=faults.max_delay_ms.max(1)),
            ))
        };
        let shown = match &fate {
            Fate::Lost => "lost".to_string(),
            Fate::Refused => "refused".to_string(),
            Fate::After(d) => format!("{}ms", d.as_millis()),
        };
        state.log(format!("{from}->{to} {what} {shown}"));
        fate
    }

    fn duplicate(&self) -> bool {
        let mut state = self.state.lock();
        let chance = state.faults.duplicate;
        state.rng.random_bool(chance)
    }

    /// Carries `request` from `from` to `to` and its answer back, as the links allow.
    async fn exchange(
        self: &Arc<Self>,
        from: usize,
        to: usize,
        request: RpcRequest,
    ) -> Result<RpcResponse, Error> {
        let kind = request.body.kind();
        // Through the wire format, as the real transport does.
        let request: RpcRequest = rpc::decode(&rpc::encode(&request))?;
        if self.duplicate() {
            let (this, copy) = (self.clone(), request.clone());
            tokio::spawn(async move {
                let _ = this.deliver(from, to, copy, "dup").await;
            });
        }
        let answer = self.deliver(from, to, request, kind).await?;
        match self.fate(to, from, "answer") {
            Fate::Lost => std::future::pending().await,
            Fate::Refused => Err(Error::PeerUnavailable(format!("kv-{from} is down"))),
            Fate::After(delay) => {
                tokio::time::sleep(delay).await;
                Ok(rpc::decode(&rpc::encode(&answer))?)
            }
        }
    }

    async fn deliver(
        &self,
        from: usize,
        to: usize,
        request: RpcRequest,
        kind: &str,
    ) -> Result<RpcResponse, Error> {
        match self.fate(from, to, kind) {
            Fate::Lost => std::future::pending().await,
            Fate::Refused => Err(Error::PeerUnavailable(format!("kv-{to} refused"))),
            Fate::After(delay) => {
                tokio::time::sleep(delay).await;
                let node = self
                    .node(to)
                    .ok_or_else(|| Error::PeerUnavailable(format!("kv-{to} went down")))?;
                handle(&node, request)
                    .await
                    .map_err(|e| Error::PeerFailed(e.to_string()))
            }
        }
    }
}

/// One node's [`Peers`] over the simulated network.
pub struct SimPeers {
    index: usize,
    network: Arc<Network>,
    membership: Arc<Membership>,
    me: Weak<SimPeers>,
}

impl SimPeers {
    /// The transport of node `index`.
    pub fn new(index: usize, network: Arc<Network>, membership: Arc<Membership>) -> Arc<Self> {
        Arc::new_cyclic(|me| SimPeers {
            index,
            network,
            membership,
            me: me.clone(),
        })
    }
}

impl Peers for SimPeers {
    fn call<'a>(
        &'a self,
        peer: &'a str,
        body: RequestBody,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ResponseBody, Error>> {
        Box::pin(async move {
            let to = crate::index_of(peer)
                .ok_or_else(|| Error::PeerFailed(format!("{peer} is not a member")))?;
            let request = transport::envelope(&self.membership, body);
            let sent_at = request.epoch;
            let outcome =
                tokio::time::timeout(timeout, self.network.exchange(self.index, to, request))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::PeerUnavailable(format!(
                            "{peer} timed out after {timeout:?}"
                        )))
                    });
            let me: Arc<dyn Peers> = self
                .me
                .upgrade()
                .ok_or_else(|| Error::Unavailable("node stopped".to_string()))?;
            transport::settle(&me, &self.membership, peer, sent_at, outcome)
        })
    }
}

//! Kubernetes Services and NetworkPolicies for the dataplane: the objects
//! ([`objects`]), where they are kept ([`source`]: the embedded store,
//! [`etcd`]), the service ports ([`compile`]) and the endpoint policies
//! ([`policy`]) compiled from them, kept current by [`Services`].
//!
//! [`Services`] follows its source as the cluster member follows its
//! datastore: list, then watch from the listing's revision; every change
//! recompiles the service ports (a pure function of all Services and
//! EndpointSlices, cheap next to a round trip), and what differs from the
//! last set goes to the dataplane as `UpsertService` / `RemoveService`.
//! The set is updated before it is sent, so a dataplane that (re)connects
//! in between gets it in the `SyncServices` that follows its `Sync`
//! ([`Services::ports`], read by the sync hook). A failed source keeps the
//! ports as they are (traffic goes on) and is listed again after a backoff.
//!
//! The endpoint policies depend on the node's endpoints too: the agent
//! tells [`Services`] of each endpoint it adds ([`Services::endpoint_up`],
//! before the endpoint's own upsert, so a pod is policed from its first
//! packet) and removes ([`Services::endpoint_down`]: DEL, GC, a failed
//! ADD's rollback), and gives the store's ready records at start
//! ([`Services::set_endpoints`]). Each recompiles the policies and sends
//! what differs (`UpsertPolicy` / `RemovePolicy`); every `Sync` is followed
//! by `SyncPolicies` of [`Services::policies`]. Pushes are serialized
//! ([`Services::pushing`]), so the dataplane gets the sets' changes in the
//! order they were compiled.

pub mod compile;
pub mod etcd;
pub mod objects;
pub mod policy;
pub mod source;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use ferry_api::objects::{ObjectListing, ObjectRef, ObjectsRequest, ObjectsResponse};
use ferry_api::table::{EndpointPolicy, PolicyRule, ServicePort};

use crate::cluster::member::follow_forever;
use crate::cluster::DsError;
use crate::dataplane_client::{DataplaneClient, DpError, REPLY_TIMEOUT};
use compile::Compiled;
use objects::{Object, ObjectKey};
use policy::{CompiledPolicies, LocalEndpoint};
use source::{Change, ObjectStore, WatchEvent};

#[derive(Default)]
struct Inner {
    objects: BTreeMap<ObjectKey, Object>,
    compiled: Compiled,
    /// The node's endpoints, by id.
    endpoints: BTreeMap<String, LocalEndpoint>,
    policies: CompiledPolicies,
    /// Why the source failed last, while it does.
    error: Option<String>,
}

/// What the dataplane must be told after a change: upserts, then the
/// keys removed, of each set.
#[derive(Debug, Default, PartialEq)]
struct Changes {
    services: (Vec<ServicePort>, Vec<String>),
    policies: (Vec<EndpointPolicy>, Vec<String>),
}

pub struct Services {
    store: Arc<dyn ObjectStore>,
    seed: u64,
    rule: compile::ClusterIpRule,
    /// This node's name (cluster mode), which `externalTrafficPolicy:
    /// Local` looks for in EndpointSlices' `nodeName`.
    node_name: Option<String>,
    inner: Mutex<Inner>,
    /// Held from a change of the sets until the dataplane was told of it:
    /// two changes' updates never interleave.
    pushing: tokio::sync::Mutex<()>,
    /// The follower task ([`Services::spawn`]), stopped by [`Services::stop`].
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An entry of a set [`Services`] keeps in the dataplane by key.
pub trait Held: Clone + PartialEq + Send + 'static {
    /// What an entry is, for the log (`service`, `policy of`).
    const WHAT: &'static str;
    /// The key the dataplane knows it by.
    fn key(&self) -> &str;
    /// What it is, for the log.
    fn describe(&self) -> String;
    /// Add or replace it in the dataplane.
    fn upsert(self, dp: &DataplaneClient) -> impl Future<Output = Result<u64, DpError>> + Send;
    /// Take the entry of `key` away.
    fn remove(key: &str, dp: &DataplaneClient)
        -> impl Future<Output = Result<u64, DpError>> + Send;
}

impl Held for ServicePort {
    const WHAT: &'static str = "service";
    fn key(&self) -> &str {
        &self.id
    }
    fn describe(&self) -> String {
        format!(
            "service {} {}:{} -> {} backend(s)",
            self.id,
            self.vip,
            self.port,
            self.backends.len()
        )
    }
    fn upsert(self, dp: &DataplaneClient) -> impl Future<Output = Result<u64, DpError>> + Send {
        dp.upsert_service(self, REPLY_TIMEOUT)
    }
    fn remove(
        key: &str,
        dp: &DataplaneClient,
    ) -> impl Future<Output = Result<u64, DpError>> + Send {
        dp.remove_service(key, REPLY_TIMEOUT)
    }
}

/// `all`, `none`, or how many rules.
fn direction(rules: &Option<Vec<PolicyRule>>) -> String {
    match rules.as_deref() {
        None => "all".to_string(),
        Some([]) => "none".to_string(),
        Some(r) => format!("{} rule(s)", r.len()),
    }
}

impl Held for EndpointPolicy {
    const WHAT: &'static str = "policy of";
    fn key(&self) -> &str {
        &self.endpoint
    }
    fn describe(&self) -> String {
        format!(
            "policy of {}: ingress {}, egress {}",
            self.endpoint,
            direction(&self.ingress),
            direction(&self.egress)
        )
    }
    fn upsert(self, dp: &DataplaneClient) -> impl Future<Output = Result<u64, DpError>> + Send {
        dp.upsert_policy(self, REPLY_TIMEOUT)
    }
    fn remove(
        key: &str,
        dp: &DataplaneClient,
    ) -> impl Future<Output = Result<u64, DpError>> + Send {
        dp.remove_policy(key, REPLY_TIMEOUT)
    }
}

/// What a dataplane holding `old` must be told to hold `new` (both by key).
pub fn diff<T: Held>(old: &[T], new: &[T]) -> (Vec<T>, Vec<String>) {
    let before: BTreeMap<&str, &T> = old.iter().map(|p| (p.key(), p)).collect();
    let after: BTreeMap<&str, &T> = new.iter().map(|p| (p.key(), p)).collect();
    let upserts = new
        .iter()
        .filter(|p| before.get(p.key()) != Some(p))
        .cloned()
        .collect();
    let removes = old
        .iter()
        .filter(|p| !after.contains_key(p.key()))
        .map(|p| p.key().to_string())
        .collect();
    (upserts, removes)
}

/// Whether the dataplane holds what ferryd compiled, for `ferryctl get`:
/// `synced`, `not connected`, or what it answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneState {
    pub services: String,
    pub policies: String,
}

fn reference(k: &ObjectKey) -> ObjectRef {
    ObjectRef {
        kind: k.kind.name().to_string(),
        namespace: k.namespace.clone(),
        name: k.name.clone(),
    }
}

impl Services {
    /// Services of `store`'s objects, Maglev `seed` on every port. Lists
    /// once (bounded by the store's own call bounds) so the dataplane's
    /// first sync carries the services; a store that does not answer now
    /// starts empty and is listed again by the task.
    pub async fn start(
        store: Arc<dyn ObjectStore>,
        seed: u64,
        rule: compile::ClusterIpRule,
        node_name: Option<String>,
    ) -> Arc<Services> {
        let s = Arc::new(Services {
            store,
            seed,
            rule,
            node_name,
            inner: Mutex::new(Inner::default()),
            pushing: tokio::sync::Mutex::new(()),
            task: Mutex::new(None),
        });
        match s.store.list().await {
            Ok(l) => {
                for (key, why) in &l.unreadable {
                    log::warn!("object {key} ignored: {why}");
                }
                let n = l.objects.len();
                s.replace(l.objects);
                let ports = s.ports().len();
                log::info!(
                    "services: {n} object(s) in {}, {ports} service port(s)",
                    s.store.describe()
                );
            }
            Err(e) => s.set_error(Some(&e)),
        }
        s
    }

    /// The service ports the dataplane must hold.
    pub fn ports(&self) -> Vec<ServicePort> {
        lock(&self.inner).compiled.ports.clone()
    }

    /// The endpoint policies the dataplane must hold.
    pub fn policies(&self) -> Vec<EndpointPolicy> {
        lock(&self.inner).policies.policies()
    }

    /// The node's endpoints are `endpoints` (the store's ready records, at
    /// start): nothing is pushed, the dataplane's first sync carries the
    /// policies.
    pub fn set_endpoints(&self, endpoints: Vec<LocalEndpoint>) {
        let mut i = lock(&self.inner);
        i.endpoints = endpoints.into_iter().map(|e| (e.id.clone(), e)).collect();
        self.recompile_for_endpoints(&mut i);
    }

    /// An endpoint is added (or changed); the policies it changes (and the
    /// node-local backends of `externalTrafficPolicy: Local` services) are
    /// in the dataplane when this returns, unless it refused them or is not
    /// connected (then the next sync carries them).
    pub async fn endpoint_up(&self, ep: LocalEndpoint, dp: &DataplaneClient) {
        let _turn = self.pushing.lock().await;
        let d = {
            let mut i = lock(&self.inner);
            i.endpoints.insert(ep.id.clone(), ep);
            self.recompile_for_endpoints(&mut i)
        };
        push_changes(dp, d).await;
    }

    /// An endpoint is gone (DEL, GC, a rolled back ADD); an unknown id
    /// changes nothing.
    pub async fn endpoint_down(&self, id: &str, dp: &DataplaneClient) {
        let _turn = self.pushing.lock().await;
        let d = {
            let mut i = lock(&self.inner);
            if i.endpoints.remove(id).is_none() {
                return;
            }
            self.recompile_for_endpoints(&mut i)
        };
        push_changes(dp, d).await;
    }

    fn set_error(&self, e: Option<&DsError>) {
        let mut i = lock(&self.inner);
        let text = e.map(ToString::to_string);
        if text.is_some() && i.error != text {
            log::error!(
                "services: {}: {}",
                self.store.describe(),
                text.as_deref().unwrap_or_default()
            );
        }
        i.error = text;
    }

    /// The endpoint policies compiled again; returns what changed.
    fn recompile_policies(&self, i: &mut Inner) -> (Vec<EndpointPolicy>, Vec<String>) {
        let objects = || i.objects.values();
        let local: Vec<LocalEndpoint> = i.endpoints.values().cloned().collect();
        let new = policy::compile(
            objects().filter_map(Object::as_network_policy),
            objects().filter_map(Object::as_namespace),
            objects().filter_map(Object::as_pod),
            &local,
        );
        warn_new("policy", &i.policies.skipped, &new.skipped);
        let d = diff(&i.policies.policies(), &new.policies());
        i.policies = new;
        d
    }

    /// What a change of the node's endpoints changes: the policies, and
    /// the services only when one is `externalTrafficPolicy: Local` (no
    /// other compiled port depends on where its backends are), so an ADD
    /// on a node with many services does not compile them all again.
    fn recompile_for_endpoints(&self, i: &mut Inner) -> Changes {
        let local = i.compiled.ports.iter().any(|p| p.node_local.is_some());
        self.recompile_these(i, local)
    }

    /// Everything compiled again (the objects changed).
    fn recompile(&self, i: &mut Inner) -> Changes {
        self.recompile_these(i, true)
    }

    fn recompile_these(&self, i: &mut Inner, services: bool) -> Changes {
        Changes {
            services: if services {
                self.recompile_services(i)
            } else {
                Default::default()
            },
            policies: self.recompile_policies(i),
        }
    }

    fn recompile_services(&self, i: &mut Inner) -> (Vec<ServicePort>, Vec<String>) {
        let objects = || i.objects.values();
        let here = compile::Here {
            node_name: self.node_name.clone(),
            addrs: i
                .endpoints
                .values()
                .flat_map(|e| e.ips.iter().copied())
                .collect(),
        };
        let new = compile::compile(
            objects().filter_map(Object::as_service),
            objects().filter_map(Object::as_slice),
            self.seed,
            &here,
        )
        .admit(&self.rule);
        warn_new("service left out", &i.compiled.skipped, &new.skipped);
        let d = diff(&i.compiled.ports, &new.ports);
        i.compiled = new;
        d
    }

    /// Every object replaced by a listing's; returns what changed.
    fn replace(&self, objects: Vec<Object>) -> Changes {
        let mut i = lock(&self.inner);
        i.objects = objects.into_iter().map(|o| (o.key(), o)).collect();
        self.recompile(&mut i)
    }

    fn apply(&self, changes: Vec<Change>) -> Changes {
        let mut i = lock(&self.inner);
        for c in changes {
            match c {
                Change::Put(o) => {
                    i.objects.insert(o.key(), o);
                }
                Change::Gone(k) => {
                    i.objects.remove(&k);
                }
            }
        }
        self.recompile(&mut i)
    }

    /// Start the task following the source, pushing changes to `dp`.
    pub fn spawn(self: &Arc<Self>, dp: DataplaneClient) {
        let me = Arc::clone(self);
        let task = tokio::spawn(async move { me.run(dp).await });
        let old = self
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task.abort_handle());
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Stop the follower task (the agent is going away): it holds a
    /// dataplane client and the store, which must close with the agent.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }

    async fn run(&self, dp: DataplaneClient) {
        follow_forever(
            &format!("services: {}", self.store.describe()),
            || self.follow(&dp),
            |e| self.set_error(Some(e)),
        )
        .await
    }

    /// A listing, then the watch until it says to list again (`Ok(why)`)
    /// or fails.
    async fn follow(&self, dp: &DataplaneClient) -> Result<String, DsError> {
        let listing = self.store.list().await?;
        self.set_error(None);
        for (key, why) in &listing.unreadable {
            log::warn!("object {key} ignored: {why}");
        }
        let revision = listing.revision;
        {
            let _turn = self.pushing.lock().await;
            let d = self.replace(listing.objects);
            push_changes(dp, d).await;
        }
        let mut watch = self.store.watch(revision).await?;
        loop {
            match watch.next().await {
                WatchEvent::Resync(why) => return Ok(why),
                WatchEvent::Changes {
                    changes,
                    unreadable,
                } => {
                    for (key, why) in &unreadable {
                        log::warn!("object {key} ignored: {why}");
                    }
                    let _turn = self.pushing.lock().await;
                    let d = self.apply(changes);
                    push_changes(dp, d).await;
                }
            }
        }
    }

    /// One `ferryctl` request; `dataplane` says whether the dataplane
    /// holds the service ports and policies ([`dataplane_state`]).
    pub async fn handle(&self, req: ObjectsRequest, dataplane: DataplaneState) -> ObjectsResponse {
        let r = match req {
            ObjectsRequest::Apply { file, text } => self.apply_file(&file, &text).await,
            ObjectsRequest::Delete { file, text } => self.delete_file(&file, &text).await,
            ObjectsRequest::Get => Ok(self.listing(dataplane)),
        };
        r.unwrap_or_else(|msg| {
            log::warn!("objects: {msg}");
            ObjectsResponse::Error { msg }
        })
    }

    async fn apply_file(&self, file: &str, text: &str) -> Result<ObjectsResponse, String> {
        let objs = objects::parse_file(file, text).map_err(|e| e.to_string())?;
        self.store
            .apply(&objs)
            .await
            .map_err(|e| format!("{file}: nothing stored: {e}"))?;
        let refs: Vec<ObjectRef> = objs.iter().map(|o| reference(&o.key())).collect();
        log::info!("{file}: applied {} object(s)", refs.len());
        Ok(ObjectsResponse::Applied { objects: refs })
    }

    async fn delete_file(&self, file: &str, text: &str) -> Result<ObjectsResponse, String> {
        let keys: Vec<ObjectKey> = objects::parse_file(file, text)
            .map_err(|e| e.to_string())?
            .iter()
            .map(Object::key)
            .collect();
        let gone = self
            .store
            .delete(&keys)
            .await
            .map_err(|e| format!("{file}: nothing deleted: {e}"))?;
        log::info!("{file}: deleted {} object(s)", gone.len());
        Ok(ObjectsResponse::Deleted {
            objects: gone.iter().map(reference).collect(),
            missing: keys
                .iter()
                .filter(|k| !gone.contains(k))
                .map(reference)
                .collect(),
        })
    }

    fn listing(&self, dataplane: DataplaneState) -> ObjectsResponse {
        let i = lock(&self.inner);
        ObjectsResponse::Listing(Box::new(ObjectListing {
            source: self.store.describe(),
            source_error: i.error.clone(),
            objects: i.objects.keys().map(reference).collect(),
            services: i.compiled.ports.clone(),
            skipped: i.compiled.skipped.clone(),
            dataplane: dataplane.services,
            policies: i.policies.endpoints.clone(),
            policy_skipped: i.policies.skipped.clone(),
            policy_dataplane: dataplane.policies,
        }))
    }
}

/// Whether the dataplane holds the service ports and the policies.
pub fn dataplane_state(dp: &DataplaneClient) -> DataplaneState {
    let state = |problem: Option<String>| match (dp.connected(), problem) {
        (false, _) => "not connected".to_string(),
        (true, None) => "synced".to_string(),
        (true, Some(p)) => p,
    };
    DataplaneState {
        services: state(dp.services_problem()),
        policies: state(dp.policies_problem()),
    }
}

/// Hand a set's changes to the dataplane. Not connected (or refused): the
/// next sync carries the set anyway.
/// Log each line of `new` that `old` did not have (what a recompile left
/// out, said once).
fn warn_new(what: &str, old: &[String], new: &[String]) {
    for why in new.iter().filter(|w| !old.contains(w)) {
        log::warn!("{what}: {why}");
    }
}

async fn push<T: Held>(dp: &DataplaneClient, (upserts, removes): (Vec<T>, Vec<String>)) {
    for key in removes {
        let what = format!("{} {key} removed", T::WHAT);
        match T::remove(&key, dp).await {
            Ok(g) => log::info!("{what} (generation {g})"),
            Err(e) => log::info!("{what}: not in the dataplane yet ({e})"),
        }
    }
    for p in upserts {
        let what = p.describe();
        match p.upsert(dp).await {
            Ok(g) => log::info!("{what} (generation {g})"),
            Err(e) => {
                log::info!("{what}: not in the dataplane yet ({e}); the next sync carries it")
            }
        }
    }
}

async fn push_changes(dp: &DataplaneClient, c: Changes) {
    push(dp, c.services).await;
    push(dp, c.policies).await;
}

#[cfg(test)]
mod tests;

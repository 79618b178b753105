//! Plumbing with rtnetlink: pod veth pairs and taps, the host port, checks.
//!
//! Node-namespace operations use a [`Netlink`] handle opened in ferryd's own
//! namespace. Operations inside a pod namespace run on a dedicated OS thread
//! that `setns`es into it and opens its own netlink socket there
//! ([`in_netns`]), so no other task ever runs in a pod's namespace.

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;

use ferry_api::pod::RouteSpec;
use ferry_api::table::{Attachment, NetnsId};
use ferry_api::MacAddr;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::route::RouteScope;
use nix::sched::CloneFlags;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use crate::netns::{self, Forbidden, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("open netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("{op}: {source}")]
    Request {
        op: String,
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("enter network namespace {path}: {source}")]
    Setns { path: String, source: nix::Error },
    #[error("netns worker thread for {path}: {msg}")]
    Thread { path: String, msg: String },
    #[error("interface {0} not found")]
    NoSuchLink(String),
    #[error("{op} channels of {ifname}: {source}")]
    Channels {
        ifname: String,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("create tap {name} in {netns}: {op}: {source}")]
    Tap {
        name: String,
        netns: String,
        op: &'static str,
        source: std::io::Error,
    },
}

impl NetlinkError {
    fn request(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetlinkError::Request {
            op: op.into(),
            source,
        }
    }
}

/// The errno a netlink request failed with, if it was the kernel refusing.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

/// Host end of a pod's veth: `fy` + 11 hex chars of SHA-256(container id,
/// ifname). Deterministic, so DEL finds it without any state.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!("fy{}", &hash_hex(container_id, ifname)[..11])
}

/// Port name of a tap pod in the dataplane (`ft` + the same hash). No
/// interface of this name exists: the tap itself lives in the pod.
pub fn tap_port_name(container_id: &str, ifname: &str) -> String {
    format!("ft{}", &hash_hex(container_id, ifname)[..11])
}

/// Temporary name of the pod end while it is created in the pod namespace.
pub fn temp_peer_name(container_id: &str, ifname: &str) -> String {
    format!("fyp{}", &hash_hex(container_id, ifname)[..11])
}

fn hash_hex(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a link looks like, from an RTM_NEWLINK answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub tx_queues: Option<u32>,
    pub rx_queues: Option<u32>,
    pub up: bool,
}

impl LinkInfo {
    fn from_message(msg: &LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            tx_queues: None,
            rx_queues: None,
            up: msg.header.flags.contains(LinkFlags::Up),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(a);
                    info.mac = Some(MacAddr(m));
                }
                LinkAttribute::Mtu(m) => info.mtu = Some(*m),
                LinkAttribute::NumTxQueues(q) => info.tx_queues = Some(*q),
                LinkAttribute::NumRxQueues(q) => info.rx_queues = Some(*q),
                _ => {}
            }
        }
        info
    }
}

/// A link by name in the namespace of `handle`; `None` if there is none.
pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
    let mut stream = handle.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(LinkInfo::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(NetlinkError::request(format!("get link {name}"), e)),
    }
}

/// Delete a link by name; `false` if it did not exist.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, NetlinkError> {
    let Some(link) = link_by_name(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(NetlinkError::request(format!("delete link {name}"), e)),
    }
}

async fn set_link(handle: &Handle, op: String, msg: LinkMessage) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| NetlinkError::request(op, e))
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetlinkError> {
    set_link(
        handle,
        format!("set {name} up"),
        LinkUnspec::new_with_index(index).up().build(),
    )
    .await
}

/// Add an IPv4 address; an address already present is fine.
async fn add_address(
    handle: &Handle,
    index: u32,
    name: &str,
    addr: Ipv4Net,
) -> Result<(), NetlinkError> {
    match handle
        .address()
        .add(index, addr.addr().into(), addr.prefix_len())
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(NetlinkError::request(
            format!("add address {addr} to {name}"),
            e,
        )),
    }
}

/// Whether [`add_route`] may replace a route to the same destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    /// The route is ferry's own (the host port's pod CIDR routes).
    Replace,
    /// A pod's route: created, never written over something that exists
    /// (EEXIST fails the ADD).
    Keep,
}

/// Add an IPv4 route out of `index`.
async fn add_route(
    handle: &Handle,
    index: u32,
    dst: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    src: Option<Ipv4Addr>,
    scope: RouteScope,
    existing: Existing,
) -> Result<(), rtnetlink::Error> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .output_interface(index)
        .scope(scope);
    if let Some(gw) = gateway {
        b = b.gateway(gw);
    }
    if let Some(src) = src {
        b = b.pref_source(src);
    }
    let add = handle.route().add(b.build());
    match existing {
        Existing::Replace => add.replace().execute().await,
        // rtnetlink's add is NLM_F_CREATE | NLM_F_EXCL.
        Existing::Keep => add.execute().await,
    }
}

/// A veth pair creation message with both ends' queue counts and MTU; the
/// peer goes into the namespace `peer_netns` (an open netns fd) if given.
fn veth_message(
    name: &str,
    peer: &str,
    queues: u32,
    mtu: u32,
    peer_netns: Option<&File>,
) -> LinkMessage {
    use std::os::fd::AsRawFd;
    let mut peer_b = LinkUnspec::new_with_name(peer)
        .mtu(mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
        .append_extra_attribute(LinkAttribute::NumRxQueues(queues));
    if let Some(ns) = peer_netns {
        peer_b = peer_b.setns_by_fd(ns.as_raw_fd());
    }
    LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .mtu(mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
        .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_b.build())))
        .build()
}

/// Run `f` with a netlink handle inside the network namespace at `path`
/// (opened and checked by [`netns::open`]: with `expect`, it must still be
/// that namespace), on a dedicated OS thread (setns affects only the
/// calling thread).
pub async fn in_netns<F, Fut, T>(
    path: &str,
    expect: Option<NetnsId>,
    forbidden: &Forbidden,
    f: F,
) -> Result<T, NetlinkError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetlinkError>>,
    T: Send + 'static,
{
    let (ns, _) = netns::open(path, expect, forbidden).await?;
    in_netns_file(ns, path, f).await
}

async fn in_netns_file<F, Fut, T>(ns: File, path: &str, f: F) -> Result<T, NetlinkError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetlinkError>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owned_path = path.to_string();
    let thread_path = owned_path.clone();
    std::thread::Builder::new()
        .name("ferryd-netns".into())
        .spawn(move || {
            let run = || -> Result<T, NetlinkError> {
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetlinkError::Setns {
                        path: thread_path.clone(),
                        source,
                    }
                })?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetlinkError::Thread {
                        path: thread_path.clone(),
                        msg: e.to_string(),
                    })?;
                rt.block_on(async move {
                    let (conn, handle, _) =
                        rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
                    tokio::spawn(conn);
                    f(handle).await
                })
            };
            let _ = tx.send(run());
        })
        .map_err(|e| NetlinkError::Thread {
            path: owned_path.clone(),
            msg: e.to_string(),
        })?;
    rx.await.map_err(|_| NetlinkError::Thread {
        path: owned_path,
        msg: "thread ended without an answer".into(),
    })?
}

/// What to build for one pod attachment.
#[derive(Debug, Clone)]
pub struct PodPlumbing {
    pub container_id: String,
    pub ifname: String,
    pub host_ifname: String,
    pub netns: String,
    /// The namespace `netns` named when ADD checked it: plumbing happens
    /// only if the path still names that one.
    pub netns_id: NetnsId,
    pub mac: MacAddr,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Routes for the pod; empty means a default route via `gateway`.
    pub routes: Vec<RouteSpec>,
    pub mtu: u32,
    /// Queues in use: one per dataplane worker.
    pub queues: u32,
    /// Queues a veth is created with room for ([`max_veth_queues`]), so a
    /// dataplane restarted with more workers gets a queue each.
    pub max_queues: u32,
    pub attachment: Attachment,
}

/// The most queues a pod veth is made with: one per CPU (the most pinned
/// workers the dataplane runs) or the current worker count if larger. A
/// veth's maximum is fixed at creation; its channels in use follow the
/// worker count (`ETHTOOL_SCHANNELS`, [`Netlink::fit_veth_queues`]).
pub fn max_veth_queues(workers: u32) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    workers.max(u32::try_from(cpus).unwrap_or(1)).clamp(1, 64)
}

fn set_channels(ifname: &str, n: u32) -> Result<(), NetlinkError> {
    ferry_tun::channels::set(ifname, n, n).map_err(|source| NetlinkError::Channels {
        ifname: ifname.to_string(),
        op: "set",
        source,
    })
}

impl PodPlumbing {
    /// The routes the pod gets (and the result reports).
    pub fn effective_routes(&self) -> Vec<RouteSpec> {
        if self.routes.is_empty() {
            vec![RouteSpec {
                dst: Ipv4Net::default(),
                gw: Some(self.gateway),
            }]
        } else {
            self.routes.clone()
        }
    }
}

/// What a pod interface looks like, for CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub mac: Option<MacAddr>,
    pub addresses: Vec<Ipv4Net>,
    pub up: bool,
}

/// ferryd's netlink connection in the node namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    /// Namespaces no pod path may name (ferryd's, the dataplane's, pid 1's).
    forbidden: Forbidden,
}

impl Netlink {
    /// Connect in the current namespace; the connection task is spawned on
    /// the current tokio runtime. Pod namespace paths naming one of
    /// `forbidden` are refused by every operation.
    pub fn connect(forbidden: Forbidden) -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle, forbidden })
    }

    pub fn forbidden(&self) -> &Forbidden {
        &self.forbidden
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        link_by_name(&self.handle, name).await
    }

    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        delete_link(&self.handle, name).await
    }

    /// Make sure the host port exists: a veth pair `kernel` / `dp`, both up
    /// with `mtu`, `kernel` holding `gateway/32` and a route to each pod CIDR
    /// `dev kernel src gateway`. With `queues` given, a pair with another
    /// queue count is recreated; without, an existing pair is kept and a
    /// new one gets one queue. Returns the MAC of the kernel end.
    pub async fn ensure_host_port(
        &self,
        kernel: &str,
        dp: &str,
        gateway: Ipv4Addr,
        pod_cidrs: &[Ipv4Net],
        mtu: u32,
        queues: Option<u32>,
    ) -> Result<MacAddr, NetlinkError> {
        let h = &self.handle;
        let k = link_by_name(h, kernel).await?;
        let d = link_by_name(h, dp).await?;
        let keep = match (&k, &d) {
            (Some(k), Some(_)) => match queues {
                Some(q) => k.tx_queues == Some(q) && k.rx_queues == Some(q),
                None => true,
            },
            _ => false,
        };
        if !keep {
            if k.is_some() {
                log::info!(
                    "host port {kernel}: recreating (queues wanted {queues:?}, had {:?})",
                    k.as_ref().and_then(|k| k.tx_queues)
                );
                delete_link(h, kernel).await?;
            }
            if d.is_some() {
                delete_link(h, dp).await?;
            }
            let q = queues.unwrap_or(1).max(1);
            h.link()
                .add(veth_message(kernel, dp, q, mtu, None))
                .execute()
                .await
                .map_err(|e| {
                    NetlinkError::request(format!("create host port veth {kernel}/{dp}"), e)
                })?;
            log::info!("host port {kernel}/{dp} created with {q} queue(s)");
        }
        for name in [kernel, dp] {
            let link = link_by_name(h, name)
                .await?
                .ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))?;
            if link.mtu != Some(mtu) {
                set_link(
                    h,
                    format!("set {name} mtu {mtu}"),
                    LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
                )
                .await?;
            }
            if !link.up {
                set_up(h, link.index, name).await?;
            }
        }
        let k = link_by_name(h, kernel)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(kernel.to_string()))?;
        add_address(h, k.index, kernel, Ipv4Net::from(gateway)).await?;
        for cidr in pod_cidrs {
            add_route(
                h,
                k.index,
                *cidr,
                None,
                Some(gateway),
                RouteScope::Link,
                Existing::Replace,
            )
            .await
            .map_err(|e| {
                NetlinkError::request(format!("add route {cidr} dev {kernel} src {gateway}"), e)
            })?;
        }
        k.mac
            .ok_or_else(|| NetlinkError::NoSuchLink(format!("{kernel} (no MAC address)")))
    }

    /// Create the pod's interface (a veth pair, or a tap made inside the
    /// pod namespace) and configure the pod end there. On failure the
    /// caller undoes with [`Netlink::unplumb`] / [`Netlink::unplumb_tap`].
    pub async fn plumb(&self, p: &PodPlumbing) -> Result<(), NetlinkError> {
        if p.attachment == Attachment::Tap {
            return self.plumb_tap(p).await;
        }
        let h = &self.handle;
        let (ns, _) = netns::open(&p.netns, Some(p.netns_id), &self.forbidden).await?;
        let tmp = temp_peer_name(&p.container_id, &p.ifname);
        let msg = veth_message(
            &p.host_ifname,
            &tmp,
            p.max_queues.max(p.queues).max(1),
            p.mtu,
            Some(&ns),
        );
        match h.link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                // A leftover of an earlier attempt under our deterministic
                // name (the caller holds this attachment's lock and has no
                // record of it): replace it.
                log::warn!("{}: leftover host veth found, recreating it", p.host_ifname);
                delete_link(h, &p.host_ifname).await?;
                let msg = veth_message(
                    &p.host_ifname,
                    &tmp,
                    p.max_queues.max(p.queues).max(1),
                    p.mtu,
                    Some(&ns),
                );
                h.link().add(msg).execute().await.map_err(|e| {
                    NetlinkError::request(
                        format!("create veth {} (peer {tmp} in {})", p.host_ifname, p.netns),
                        e,
                    )
                })?;
            }
            Err(e) => {
                return Err(NetlinkError::request(
                    format!("create veth {} (peer {tmp} in {})", p.host_ifname, p.netns),
                    e,
                ))
            }
        }
        let host = link_by_name(h, &p.host_ifname)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(p.host_ifname.clone()))?;
        set_channels(&p.host_ifname, p.queues.max(1))?;
        set_up(h, host.index, &p.host_ifname).await?;

        let pod = p.clone();
        in_netns_file(ns, &p.netns, move |h| async move {
            configure_pod_end(&h, &tmp, &pod).await
        })
        .await
    }

    /// A tap pod: create the persistent tap under the temporary name inside
    /// the pod namespace (on the netns thread), then configure it like a
    /// veth's pod end (rename, MAC, MTU, address, routes).
    async fn plumb_tap(&self, p: &PodPlumbing) -> Result<(), NetlinkError> {
        let tmp = temp_peer_name(&p.container_id, &p.ifname);
        let pod = p.clone();
        in_netns(
            &p.netns,
            Some(p.netns_id),
            &self.forbidden,
            move |h| async move {
                crate::tap::create_persistent(&tmp).map_err(|(op, source)| NetlinkError::Tap {
                    name: tmp.clone(),
                    netns: pod.netns.clone(),
                    op,
                    source,
                })?;
                configure_pod_end(&h, &tmp, &pod).await
            },
        )
        .await
    }

    /// Undo a tap pod: delete its tap inside the pod namespace, under the
    /// temporary name or under `ifname` if it carries our `mac` (so an
    /// interface of that name that ADD did not make is never touched).
    /// A namespace that is gone (or, by `netns_id`, is another namespace
    /// now) took the tap with it. Returns whether a link was deleted.
    pub async fn unplumb_tap(
        &self,
        netns: &str,
        netns_id: Option<NetnsId>,
        container_id: &str,
        ifname: &str,
        mac: MacAddr,
    ) -> Result<bool, NetlinkError> {
        let tmp = temp_peer_name(container_id, ifname);
        let ifname = ifname.to_string();
        let r = in_netns(netns, netns_id, &self.forbidden, move |h| async move {
            let mut deleted = delete_link(&h, &tmp).await?;
            if let Some(link) = link_by_name(&h, &ifname).await? {
                if link.mac == Some(mac) {
                    deleted |= delete_link(&h, &ifname).await?;
                }
            }
            Ok(deleted)
        })
        .await;
        match r {
            // The namespace is gone (or went away meanwhile): so is the tap.
            Err(NetlinkError::Netns(e)) if e.is_gone() => Ok(false),
            other => other,
        }
    }

    /// Make a live pod veth use `workers` queues on both ends (or as many as
    /// it was made with, if fewer: workers beyond get no queue on it).
    /// Returns the queue count in use. The side that shrinks goes first:
    /// with XDP on the host end the kernel refuses a pod end sending on
    /// more queues than the host end receives on.
    pub async fn fit_veth_queues(
        &self,
        host_ifname: &str,
        netns: &str,
        netns_id: Option<NetnsId>,
        pod_ifname: &str,
        workers: u32,
    ) -> Result<u32, NetlinkError> {
        let get_err = |source| NetlinkError::Channels {
            ifname: host_ifname.to_string(),
            op: "get",
            source,
        };
        let host = ferry_tun::channels::get(host_ifname).map_err(get_err)?;
        let want = workers.min(host.max_rx).min(host.max_tx).max(1);
        if host.rx == want && host.tx == want {
            return Ok(want);
        }
        let pod_ifname = pod_ifname.to_string();
        let pod_end = || {
            let pod_ifname = pod_ifname.clone();
            in_netns(netns, netns_id, &self.forbidden, move |_| async move {
                set_channels(&pod_ifname, want)
            })
        };
        if want > host.rx {
            set_channels(host_ifname, want)?;
            pod_end().await?;
        } else {
            pod_end().await?;
            set_channels(host_ifname, want)?;
        }
        log::info!(
            "{host_ifname}: {} -> {want} queue(s) for {workers} worker(s)",
            host.rx
        );
        Ok(want)
    }

    /// Delete the pod's host veth (which removes its peer in the pod);
    /// nothing to delete is fine. Returns whether a link was deleted.
    pub async fn unplumb(&self, host_ifname: &str) -> Result<bool, NetlinkError> {
        delete_link(&self.handle, host_ifname).await
    }

    /// The pod interface `ifname` as seen inside `netns` (which must still
    /// be `netns_id`, when given); `None` if missing.
    pub async fn pod_view(
        &self,
        netns: &str,
        netns_id: Option<NetnsId>,
        ifname: &str,
    ) -> Result<Option<PodView>, NetlinkError> {
        let ifname = ifname.to_string();
        in_netns(netns, netns_id, &self.forbidden, move |h| async move {
            let Some(link) = link_by_name(&h, &ifname).await? else {
                return Ok(None);
            };
            let mut addrs = Vec::new();
            let mut stream = h
                .address()
                .get()
                .set_link_index_filter(link.index)
                .execute();
            while let Some(msg) = stream
                .try_next()
                .await
                .map_err(|e| NetlinkError::request(format!("list addresses of {ifname}"), e))?
            {
                if msg.header.index != link.index {
                    continue;
                }
                for attr in &msg.attributes {
                    if let AddressAttribute::Address(std::net::IpAddr::V4(a)) = attr {
                        if let Ok(net) = Ipv4Net::new(*a, msg.header.prefix_len) {
                            addrs.push(net);
                        }
                    }
                }
            }
            Ok(Some(PodView {
                mac: link.mac,
                addresses: addrs,
                up: link.up,
            }))
        })
        .await
    }
}

/// Configure a pod end that exists as `tmp` in the namespace of `h`: rename
/// it to the pod's ifname with its MAC and MTU, add the address, bring it
/// (and `lo`) up, add the routes.
async fn configure_pod_end(h: &Handle, tmp: &str, pod: &PodPlumbing) -> Result<(), NetlinkError> {
    let link = link_by_name(h, tmp)
        .await?
        .ok_or_else(|| NetlinkError::NoSuchLink(format!("{tmp} in {}", pod.netns)))?;
    let idx = link.index;
    if pod.attachment == Attachment::Veth {
        set_channels(tmp, pod.queues.max(1))?;
    }
    set_link(
        h,
        format!(
            "rename {tmp} to {} and set MAC {} in {}",
            pod.ifname, pod.mac, pod.netns
        ),
        LinkUnspec::new_with_index(idx)
            .name(pod.ifname.clone())
            .address(pod.mac.octets().to_vec())
            .mtu(pod.mtu)
            .build(),
    )
    .await?;
    add_address(h, idx, &pod.ifname, pod.address).await?;
    set_up(h, idx, &pod.ifname).await?;
    if let Some(lo) = link_by_name(h, "lo").await? {
        if !lo.up {
            set_up(h, lo.index, "lo").await?;
        }
    }
    let mut onlink_done = false;
    for r in pod.effective_routes() {
        let gw = r.gw.unwrap_or(pod.gateway);
        let first = add_route(
            h,
            idx,
            r.dst,
            Some(gw),
            None,
            RouteScope::Universe,
            Existing::Keep,
        )
        .await;
        let retry = match first {
            Ok(()) => continue,
            // The gateway is not on a connected subnet (e.g. a /32
            // address): reach it on-link first, then retry.
            Err(e) if errno(&e) == Some(libc::ENETUNREACH) && !onlink_done => e,
            Err(e) => {
                return Err(NetlinkError::request(
                    format!("add route {} via {gw} in {}", r.dst, pod.netns),
                    e,
                ))
            }
        };
        log::debug!(
            "route {} via {gw}: {retry}; adding {gw}/32 scope link first",
            r.dst
        );
        add_route(
            h,
            idx,
            Ipv4Net::from(gw),
            None,
            None,
            RouteScope::Link,
            Existing::Keep,
        )
        .await
        .map_err(|e| {
            NetlinkError::request(
                format!("add route {gw}/32 dev {} scope link", pod.ifname),
                e,
            )
        })?;
        onlink_done = true;
        add_route(
            h,
            idx,
            r.dst,
            Some(gw),
            None,
            RouteScope::Universe,
            Existing::Keep,
        )
        .await
        .map_err(|e| {
            NetlinkError::request(format!("add route {} via {gw} in {}", r.dst, pod.netns), e)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifnames_are_deterministic_and_fit() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("fy"));
        assert!(a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(a, host_ifname("abd", "eth0"));
        // The separator keeps ("ab", "ceth0") apart from ("abc", "eth0").
        assert_ne!(host_ifname("ab", "ceth0"), host_ifname("abc", "eth0"));
        let t = temp_peer_name("abc", "eth0");
        assert_eq!(t.len(), 14);
        assert_ne!(t, a);
    }
}

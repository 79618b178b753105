//! What an interface named in the table API is, read from the kernel with
//! one rtnetlink request (`RTM_GETLINK` by name) before anything is
//! attached to it, so that the dataplane only ever drives ferry's veths and
//! never puts an XDP program on the node's own links (`lo`, the uplink, a
//! bridge).
//!
//! Rules ([`check_veth`]): every AF_XDP port must be a veth
//! (`IFLA_INFO_KIND` "veth"). A pod's host veth must have its peer in
//! *another* network namespace (the link carries `IFLA_LINK_NETNSID`, which
//! the kernel adds only when the peer is elsewhere). The host port pair
//! (`ferry0`/`ferry0dp`) lives in the dataplane's own namespace, so it is
//! exempt from that rule; it still has to be a veth.

use std::io;
use std::time::Duration;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::io::port::{PortError, VethRole};

/// How long to wait for the kernel's answer (it is queued before `send`
/// returns; this only bounds the unexpected).
const REPLY_WAIT: Duration = Duration::from_millis(200);
const REPLY_POLL: Duration = Duration::from_millis(2);

/// What the kernel says about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFacts {
    /// `IFLA_INFO_KIND` ("veth", "bridge", ...); `None` for links without
    /// one (`lo`, physical NICs).
    pub kind: Option<String>,
    /// `IFLA_LINK_NETNSID`: the link's peer is in another namespace.
    pub peer_netnsid: Option<i32>,
    /// `IFLA_ADDRESS`, when it is a 6-byte MAC.
    pub mac: Option<ferry_api::MacAddr>,
    /// `IFLA_MTU`.
    pub mtu: Option<u32>,
}

/// MAC and MTU of `ifname` (the uplink), `None` when there is no such
/// link or it has no Ethernet address.
pub fn link_info(ifname: &str) -> Option<crate::io::port::LinkInfo> {
    let facts = facts(ifname).ok()??;
    Some(crate::io::port::LinkInfo {
        mac: facts.mac?,
        mtu: facts.mtu?,
    })
}

/// The facts of the link `ifname` in the calling thread's network
/// namespace; `None` when there is no such link.
pub fn facts(ifname: &str) -> io::Result<Option<LinkFacts>> {
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(ifname.to_string()));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut req = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
    );
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);

    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    socket.set_non_blocking(true)?;
    let mut waited = Duration::ZERO;
    let reply = loop {
        match socket.recv_from_full() {
            Ok((bytes, _)) => break bytes,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && waited < REPLY_WAIT => {
                std::thread::sleep(REPLY_POLL);
                waited += REPLY_POLL;
            }
            Err(e) => return Err(e),
        }
    };
    parse(&reply)
}

/// The facts in one `RTM_GETLINK` reply.
fn parse(reply: &[u8]) -> io::Result<Option<LinkFacts>> {
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(reply)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
            let mut facts = LinkFacts {
                kind: None,
                peer_netnsid: None,
                mac: None,
                mtu: None,
            };
            for attr in link.attributes {
                match attr {
                    LinkAttribute::LinkInfo(infos) => {
                        for info in infos {
                            if let LinkInfo::Kind(kind) = info {
                                facts.kind = Some(kind.to_string());
                            }
                        }
                    }
                    LinkAttribute::LinkNetNsId(id) => facts.peer_netnsid = Some(id),
                    LinkAttribute::Address(a) => {
                        facts.mac = <[u8; 6]>::try_from(a.as_slice())
                            .ok()
                            .map(ferry_api::MacAddr)
                    }
                    LinkAttribute::Mtu(m) => facts.mtu = Some(m),
                    _ => {}
                }
            }
            Ok(Some(facts))
        }
        NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
            Some(libc::ENODEV) => Ok(None),
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Err(io::Error::other("RTM_GETLINK answered with an ACK")),
        },
        other => Err(io::Error::other(format!(
            "unexpected RTM_GETLINK reply {other:?}"
        ))),
    }
}

/// Whether a link with `facts` may be driven as a port of `role`.
pub fn judge(ifname: &str, facts: &LinkFacts, role: VethRole) -> Result<(), PortError> {
    if facts.kind.as_deref() != Some("veth") {
        return Err(PortError::NotVeth {
            ifname: ifname.to_string(),
            kind: facts
                .kind
                .clone()
                .unwrap_or_else(|| "no kind (lo, a NIC)".into()),
        });
    }
    if role == VethRole::Pod && facts.peer_netnsid.is_none() {
        return Err(PortError::PeerHere {
            ifname: ifname.to_string(),
        });
    }
    Ok(())
}

/// Check `ifname` (in the calling thread's namespace) before attaching to
/// it as a port of `role`.
pub fn check_veth(ifname: &str, role: VethRole) -> Result<(), PortError> {
    match facts(ifname) {
        Ok(Some(f)) => judge(ifname, &f, role),
        Ok(None) => Err(PortError::NoSuchInterface {
            ifname: ifname.to_string(),
        }),
        Err(source) => Err(PortError::LinkQuery {
            ifname: ifname.to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(kind: Option<&str>, peer_netnsid: Option<i32>) -> LinkFacts {
        LinkFacts {
            kind: kind.map(str::to_string),
            peer_netnsid,
            mac: None,
            mtu: None,
        }
    }

    #[test]
    fn only_veths_with_their_peer_elsewhere_are_pod_ports() {
        use VethRole::*;
        let cases = [
            (f(Some("veth"), Some(0)), Pod, true),
            (f(Some("veth"), None), Pod, false),
            (f(Some("veth"), None), Host, true),
            (f(Some("veth"), Some(3)), Host, true),
            (f(None, None), Pod, false),
            (f(None, None), Host, false),
            (f(Some("bridge"), None), Host, false),
            (f(Some("dummy"), Some(1)), Pod, false),
            (f(Some("tun"), None), Pod, false),
        ];
        for (facts, role, ok) in cases {
            let r = judge("x0", &facts, role);
            assert_eq!(r.is_ok(), ok, "{facts:?} as {role:?}: {r:?}");
        }
        let e = judge("lo", &f(None, None), Host).unwrap_err().to_string();
        assert!(e.contains("lo") && e.contains("not a veth"), "{e}");
        let e = judge("fy0", &f(Some("veth"), None), Pod)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fy0") && e.contains("namespace"), "{e}");
    }

    /// Reads only: `lo` exists in every namespace and has no kind.
    #[test]
    fn the_kernel_is_asked() {
        let lo = facts("lo").unwrap().unwrap();
        assert_eq!((lo.kind, lo.peer_netnsid), (None, None));
        assert_eq!(lo.mac, Some(ferry_api::MacAddr([0; 6])));
        assert_eq!(lo.mtu, Some(65536));
        assert_eq!(facts("fdpnosuchlink0").unwrap(), None);
        assert!(matches!(
            check_veth("lo", VethRole::Host),
            Err(PortError::NotVeth { .. })
        ));
    }
}

use super::*;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn rec(name: &str, addr: &str, block: &str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        address: addr.parse().unwrap(),
        block: net(block),
        block6: None,
        vtep_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        overlay: "vxlan".into(),
        vni: 1,
        renewed: 0,
    }
}

fn rules(on_link: Option<Vec<Ipv4Net>>) -> PeerRules {
    PeerRules {
        settings: Some(ClusterSettings {
            cidr: net("10.70.0.0/16"),
            block_len: 24,
            overlay: "vxlan".into(),
            vni: 1,
            v6: None,
        }),
        me: rec("n1", "192.168.70.1", "10.70.1.0/24"),
        on_link,
    }
}

#[test]
fn candidates_start_with_the_preferred_block_and_skip_it_later() {
    let all: Vec<_> =
        candidate_blocks(net("10.70.0.0/22"), 24, Some(net("10.70.2.0/24"))).collect();
    assert_eq!(
        all,
        [
            "10.70.2.0/24",
            "10.70.0.0/24",
            "10.70.1.0/24",
            "10.70.3.0/24"
        ]
        .map(net)
    );
    // A preferred block that is not one of the cluster's is ignored.
    for bad in ["10.71.0.0/24", "10.70.0.0/25", "10.70.0.0/23"] {
        let first = candidate_blocks(net("10.70.0.0/22"), 24, Some(net(bad))).next();
        assert_eq!(first, Some(net("10.70.0.0/24")), "{bad}");
    }
    assert_eq!(candidate_blocks(net("10.70.0.0/16"), 24, None).count(), 256);
}

#[test]
fn peers_become_routes_and_go_away_with_their_record() {
    let r = rules(None);
    let mut t = PeerTable::default();
    let up = t.apply(&r, Change::Put(rec("n2", "192.168.70.2", "10.70.2.0/24")));
    let route = Route {
        prefix: "10.70.2.0/24".parse().unwrap(),
        next_hop: NextHop::Node("192.168.70.2".parse().unwrap()),
    };
    assert_eq!(up, vec![RouteUpdate::Upsert(route.clone())]);
    // A renewal (same address) changes no route.
    let mut renewed = rec("n2", "192.168.70.2", "10.70.2.0/24");
    renewed.renewed = 99;
    assert!(t.apply(&r, Change::Put(renewed)).is_empty());
    // The node moves to another address: the route follows.
    let moved = t.apply(&r, Change::Put(rec("n2", "192.168.70.9", "10.70.2.0/24")));
    assert!(
        matches!(&moved[..], [RouteUpdate::Upsert(x)] if x.next_hop == NextHop::Node("192.168.70.9".parse().unwrap()))
    );
    assert_eq!(
        t.apply(&r, Change::Gone(net("10.70.2.0/24"))),
        vec![RouteUpdate::Remove(net("10.70.2.0/24").into())]
    );
    assert!(t.is_empty());
    // Gone for a block nobody held: nothing.
    assert!(t.apply(&r, Change::Gone(net("10.70.5.0/24"))).is_empty());
}

#[test]
fn bad_records_are_held_refused_and_never_routed() {
    let r = rules(Some(vec![net("192.168.70.0/24")]));
    let cases = [
        (rec("x", "192.168.70.5", "10.71.0.0/24"), "cluster CIDR"),
        (rec("x", "192.168.70.5", "10.70.1.0/24"), "this node's"),
        (rec("x", "192.168.70.1", "10.70.5.0/24"), "this node's"),
        (rec("x", "127.0.0.1", "10.70.5.0/24"), "unicast"),
        (rec("x", "10.9.9.9", "10.70.5.0/24"), "uplink's link"),
        (
            NodeRecord {
                vni: 7,
                ..rec("x", "192.168.70.5", "10.70.5.0/24")
            },
            "vni",
        ),
    ];
    for (bad, why) in cases {
        let mut t = PeerTable::default();
        assert!(t.apply(&r, Change::Put(bad.clone())).is_empty(), "{bad:?}");
        assert!(t.routes().is_empty());
        let held: Vec<_> = t.entries().collect();
        match &held[..] {
            [PeerEntry {
                state: RouteState::Refused(m),
                ..
            }] => assert!(m.contains(why), "{m} / {why}"),
            // This node's own record is not a peer at all.
            [] => assert_eq!(bad.block, r.me.block),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_listing_replaces_the_table_with_the_least_route_churn() {
    let r = rules(None);
    let mut t = PeerTable::default();
    t.replace(
        &r,
        vec![
            rec("n2", "192.168.70.2", "10.70.2.0/24"),
            rec("n3", "192.168.70.3", "10.70.3.0/24"),
        ],
    );
    assert_eq!(t.routes().len(), 2);
    // After a resync: n3 gone, n4 new, n2 unchanged.
    let up = t.replace(
        &r,
        vec![
            rec("n2", "192.168.70.2", "10.70.2.0/24"),
            rec("n4", "192.168.70.4", "10.70.4.0/24"),
        ],
    );
    assert_eq!(up.len(), 2, "{up:?}");
    assert!(up.contains(&RouteUpdate::Remove(net("10.70.3.0/24").into())));
    assert!(up.iter().any(|u| matches!(u, RouteUpdate::Upsert(x) if x.prefix == "10.70.4.0/24".parse::<ipnet::IpNet>().unwrap())));
    assert_eq!(t.addresses().len(), 2);
}

#[test]
fn settings_mismatch_names_both_sides() {
    let a = rules(None).settings.unwrap();
    assert_eq!(a.mismatch(&a.clone()), None);
    let b = ClusterSettings {
        block_len: 26,
        ..a.clone()
    };
    let m = a.mismatch(&b).unwrap();
    assert!(
        m.contains("block_len 26") && m.contains("block_len 24"),
        "{m}"
    );
}

/// The single node goes through the same member: its routes are its
/// `[[peers]]`, exactly as the configuration says, and its view lists it
/// and them.
#[test]
fn the_embedded_member_routes_the_configured_peers() {
    let cfg = crate::config::Config::parse(
        r#"
        pod_cidrs = ["10.70.1.0/24"]
        uplink = "up0"
        node_address = "192.168.70.1"
        [[peers]]
        address = "192.168.70.2"
        pod_cidr = "10.70.2.0/24"
        [[peers]]
        address = "192.168.70.3"
        pod_cidr = "10.70.3.0/24"
        "#,
    )
    .unwrap();
    let m = member::Member::embedded(&cfg);
    assert_eq!(m.routes(), crate::reconcile::peer_routes(&cfg));
    assert_eq!(m.block(), Some(net("10.70.1.0/24")));
    let v = m.view();
    assert!(v.reachable && v.error.is_none());
    assert!(v.datastore.starts_with("embedded"));
    assert_eq!(v.node.as_ref().map(|n| n.route.as_str()), Some("self"));
    let peers: Vec<(String, &str)> = v
        .peers
        .iter()
        .map(|p| (p.block.to_string(), p.route.as_str()))
        .collect();
    assert_eq!(
        peers,
        [
            ("10.70.2.0/24".to_string(), "routed"),
            ("10.70.3.0/24".to_string(), "routed")
        ]
    );
    // A single node without an uplink has no peers at all.
    let single = member::Member::embedded(&crate::config::Config::default());
    assert!(single.routes().is_empty() && single.view().peers.is_empty());
}

fn dual_stack_rules() -> PeerRules {
    let mut r = rules(None);
    let s = r.settings.as_mut().unwrap();
    s.v6 = Some(Cidr6 {
        cidr: "fd00:70::/48".parse().unwrap(),
        block_len: 64,
    });
    r.me.block6 = s.block6(r.me.block);
    r
}

#[test]
fn a_node_s_ipv6_block_is_the_one_with_its_ipv4_block_s_index() {
    let r = dual_stack_rules();
    let s = r.settings.as_ref().unwrap();
    let six = |t: &str| t.parse::<Ipv6Net>().ok();
    assert_eq!(s.block6(net("10.70.0.0/24")), six("fd00:70::/64"));
    assert_eq!(s.block6(net("10.70.1.0/24")), six("fd00:70:0:1::/64"));
    assert_eq!(s.block6(net("10.70.255.0/24")), six("fd00:70:0:ff::/64"));
    // Not a block of the cluster: none.
    for bad in ["10.71.0.0/24", "10.70.0.0/25", "10.70.0.128/24"] {
        assert_eq!(s.block6(bad.parse().unwrap()), None, "{bad}");
    }
    // Fewer IPv6 blocks than IPv4 ones: the ones past the end have none.
    let tight = Cidr6 {
        cidr: "fd00:70::/60".parse().unwrap(),
        block_len: 64,
    };
    assert_eq!(
        tight.block_of(net("10.70.0.0/16"), 24, net("10.70.15.0/24")),
        six("fd00:70:0:f::/64")
    );
    assert_eq!(
        tight.block_of(net("10.70.0.0/16"), 24, net("10.70.16.0/24")),
        None
    );
    // An IPv4 cluster has no IPv6 blocks.
    assert_eq!(
        rules(None).settings.unwrap().block6(net("10.70.1.0/24")),
        None
    );
}

#[test]
fn a_dual_stack_peer_gives_two_routes_and_its_ipv6_block_is_checked() {
    let r = dual_stack_rules();
    let s = r.settings.clone().unwrap();
    let mut peer = rec("n2", "192.168.70.2", "10.70.2.0/24");
    peer.block6 = s.block6(peer.block);
    let mut t = PeerTable::default();
    let up = t.apply(&r, Change::Put(peer.clone()));
    let to_n2 = NextHop::Node("192.168.70.2".parse::<Ipv4Addr>().unwrap().into());
    assert_eq!(
        up,
        vec![
            RouteUpdate::Upsert(Route {
                prefix: "10.70.2.0/24".parse().unwrap(),
                next_hop: to_n2.clone(),
            }),
            RouteUpdate::Upsert(Route {
                prefix: "fd00:70:0:2::/64".parse().unwrap(),
                next_hop: to_n2,
            }),
        ]
    );
    assert_eq!(t.routes().len(), 2);
    // Renewed unchanged: nothing to do; gone: both routes go.
    assert!(t.apply(&r, Change::Put(peer.clone())).is_empty());
    let down = t.apply(&r, Change::Gone(peer.block));
    assert_eq!(
        down,
        vec![
            RouteUpdate::Remove("10.70.2.0/24".parse().unwrap()),
            RouteUpdate::Remove("fd00:70:0:2::/64".parse().unwrap()),
        ]
    );
    // A record whose IPv6 block is not its block's, or that lacks one, is
    // refused, and an IPv6 block in an IPv4 cluster too.
    for block6 in [Some("fd00:70:0:9::/64".parse().unwrap()), None] {
        let odd = NodeRecord {
            block6,
            ..peer.clone()
        };
        assert!(
            r.refuse(&odd).is_some_and(|why| why.contains("IPv6 block")),
            "{block6:?}"
        );
    }
    assert!(rules(None)
        .refuse(&peer)
        .is_some_and(|why| why.contains("IPv4 cluster")));
    // Settings differ by their IPv6 side too.
    let v4 = rules(None).settings.unwrap();
    assert!(s.mismatch(&v4).is_some_and(|m| m.contains("no IPv6")));
}

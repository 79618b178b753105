use super::*;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn rec(name: &str, addr: &str, block: &str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        address: addr.parse().unwrap(),
        block: net(block),
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
        vec![RouteUpdate::Remove(net("10.70.2.0/24"))]
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
    assert!(up.contains(&RouteUpdate::Remove(net("10.70.3.0/24"))));
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

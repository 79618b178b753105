//! ferryctl: the operator CLI. Asks ferry-dataplane (tables, counters, drops)
//! and ferryd (status) and prints aligned tables or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_api::client;
use ferry_api::pod::{DEFAULT_DATAPLANE_SOCKET, DEFAULT_FERRYD_SOCKET};
use ferryctl as ctl;

#[derive(Parser, Debug)]
#[command(
    name = "ferryctl",
    version,
    about = "Inspect ferry on this node: endpoints, routes, peers, counters, drops, status (tables, or --json); apply and delete Kubernetes objects (Services, EndpointSlices, NetworkPolicies, ...) and show what ferryd compiled of them"
)]
struct Args {
    /// ferryd's pod-API socket.
    #[arg(long, value_name = "SOCK", default_value = DEFAULT_FERRYD_SOCKET, global = true)]
    ferryd: PathBuf,
    /// ferry-dataplane's table-API socket.
    #[arg(long, value_name = "SOCK", default_value = DEFAULT_DATAPLANE_SOCKET, global = true)]
    dataplane: PathBuf,
    /// Print JSON instead of aligned tables (every subcommand).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Endpoints in the dataplane's tables: id, addresses (IPv4 first; `ips` in the JSON, `ip` the first), MAC, port name (a veth pod's host ifname; `ft…` for a tap pod), port index, then ferryd's stale attachments (pod gone before its DEL; kept until DEL or GC).
    Endpoints,
    /// Node settings (gateway, pod CIDRs, host port, uplink) and routes.
    Routes,
    /// The uplink (interface, address, overlay, how the dataplane drives it) and the peer nodes: pod CIDR, next hop, MAC and neighbour state as the dataplane resolved them.
    Peers,
    /// Per-port (with how the dataplane drives it: native-copy, tap, ...) and per-worker counters, drops by reason and the kernel's AF_XDP drops (`xsk:…`).
    #[command(visible_alias = "counters")]
    Stats,
    /// Dropped frames by port and reason, the kernel's AF_XDP drops as `xsk:<counter>` (only those seen).
    Drops,
    /// ferryd's STATUS and the dataplane's table generation.
    Status,
    /// The cluster's nodes as ferryd knows them: name, block (pod CIDR), uplink address, VTEP MAC, overlay, last renewal, and whether this node routes to it (self, routed, refused: why); then the datastore and whether it answers.
    Nodes,
    /// Create or replace the Kubernetes objects of a YAML (`---` between documents) or JSON file (`-`: standard input): Service, EndpointSlice, NetworkPolicy, Namespace, Pod. ferryd checks every document and stores all of them or none (etcd with [cluster], its embedded store otherwise).
    Apply {
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
    },
    /// Delete the objects a file names (kind, namespace, name; the rest of each document is not looked at beyond being valid), all or none; objects not stored are reported, not an error.
    Delete {
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
    },
    /// What ferryd holds: `services` (the service ports compiled from Services and EndpointSlices: id, ClusterIP:port, protocol, affinity, ready backends; and whether the dataplane holds them), `policies` (every local endpoint: its pod from K8S_POD_NAMESPACE/K8S_POD_NAME, the NetworkPolicies selecting it, its compiled ingress and egress rules (peers, ports), rules left out and why, and whether the dataplane holds them) or `objects` (every stored object).
    Get {
        #[arg(value_enum)]
        what: GetWhat,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum GetWhat {
    #[value(alias = "svc", alias = "service")]
    Services,
    #[value(alias = "policy", alias = "netpol", alias = "networkpolicies")]
    Policies,
    #[value(alias = "all")]
    Objects,
}

/// A file's name and text (`-`: standard input), bounded by what ferryd
/// takes in one request.
fn read_file(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    use std::io::Read;
    const MAX: u64 = 900 << 10;
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX + 1)
            .read_to_string(&mut text)
            .context("read standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX + 1).read_to_string(&mut text))
            .with_context(|| format!("read {}", path.display()))?;
    }
    if text.len() as u64 > MAX {
        anyhow::bail!("{}: larger than {MAX} bytes; split it", path.display());
    }
    Ok((path.display().to_string(), text))
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("encode JSON")?
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferryctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    use ferry_api::objects::{ObjectsRequest, ObjectsResponse};
    match args.command {
        Cmd::Apply { file } => {
            let (file, text) = read_file(&file)?;
            let r = client::ferryd_objects(&args.ferryd, ObjectsRequest::Apply { file, text })?;
            if args.json {
                print_json(&r)?;
            } else if let ObjectsResponse::Applied { objects } = &r {
                for o in objects {
                    println!("{} applied", ctl::object_line(o));
                }
            }
        }
        Cmd::Delete { file } => {
            let (file, text) = read_file(&file)?;
            let r = client::ferryd_objects(&args.ferryd, ObjectsRequest::Delete { file, text })?;
            if args.json {
                print_json(&r)?;
            } else if let ObjectsResponse::Deleted { objects, missing } = &r {
                for o in objects {
                    println!("{} deleted", ctl::object_line(o));
                }
                for o in missing {
                    println!("{} not found", ctl::object_line(o));
                }
            }
        }
        Cmd::Get { what } => {
            let ObjectsResponse::Listing(l) =
                client::ferryd_objects(&args.ferryd, ObjectsRequest::Get)?
            else {
                anyhow::bail!("ferryd answered something else than a listing");
            };
            match (what, args.json) {
                (GetWhat::Services, true) => print_json(&l.services)?,
                (GetWhat::Policies, true) => print_json(&serde_json::json!({
                    "endpoints": l.policies,
                    "left_out": l.policy_skipped,
                    "dataplane": l.policy_dataplane,
                }))?,
                (GetWhat::Policies, false) => print!("{}", ctl::render_policies(&l)),
                (GetWhat::Objects, true) => print_json(&l)?,
                (GetWhat::Services, false) => print!("{}", ctl::render_services(&l)),
                (GetWhat::Objects, false) => print!("{}", ctl::render_objects(&l)),
            }
        }
        Cmd::Endpoints => {
            let tables = client::tables(&args.dataplane)?;
            // Stale attachments are ferryd's to know; without ferryd the
            // dataplane's view is still worth printing.
            let stale = match client::ferryd_status(&args.ferryd) {
                Ok(s) => s.stale,
                Err(e) => {
                    eprintln!("ferryctl: stale attachments unknown: {e}");
                    Vec::new()
                }
            };
            let rows = ctl::endpoint_rows(&tables, &stale);
            if args.json {
                print_json(&rows)?;
            } else {
                print!("{}", ctl::render_endpoints(&rows));
            }
        }
        Cmd::Routes => {
            let t = client::tables(&args.dataplane)?;
            if args.json {
                print_json(&serde_json::json!({
                    "generation": t.generation,
                    "node": t.node,
                    "routes": t.routes,
                    "ports": t.ports,
                }))?;
            } else {
                print!("{}", ctl::render_routes(&t));
            }
        }
        Cmd::Peers => {
            let t = client::tables(&args.dataplane)?;
            // The uplink's mode is in the counters; without them the rest
            // is still worth printing.
            let stats = match client::stats(&args.dataplane) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("ferryctl: uplink mode unknown: {e}");
                    None
                }
            };
            let view = ctl::peers_view(&t, stats.as_ref());
            if args.json {
                print_json(&view)?;
            } else {
                print!("{}", ctl::render_peers(&view));
            }
        }
        Cmd::Stats => {
            let s = client::stats(&args.dataplane)?;
            if args.json {
                print_json(&s)?;
            } else {
                print!("{}", ctl::render_stats(&s));
            }
        }
        Cmd::Drops => {
            let rows = ctl::drop_rows(&client::stats(&args.dataplane)?);
            if args.json {
                print_json(&rows)?;
            } else {
                print!("{}", ctl::render_drops(&rows));
            }
        }
        Cmd::Nodes => {
            let status = client::ferryd_status(&args.ferryd)?;
            let Some(view) = status.cluster else {
                anyhow::bail!("ferryd did not say which nodes it knows (an older ferryd?)");
            };
            if args.json {
                print_json(&view)?;
            } else {
                print!("{}", ctl::render_nodes(&view, ctl::unix_now()));
            }
        }
        Cmd::Status => {
            let client::FerrydStatus {
                ready,
                msg,
                stale,
                cluster,
            } = client::ferryd_status(&args.ferryd)?;
            let generation = client::tables(&args.dataplane).map(|t| t.generation);
            if args.json {
                print_json(&serde_json::json!({
                    "ready": ready,
                    "msg": msg,
                    "stale": stale,
                    "cluster": cluster,
                    "dataplane_generation": generation.as_ref().ok(),
                    "dataplane_error": generation.as_ref().err().map(|e| e.to_string()),
                }))?;
            } else {
                println!(
                    "ferryd: {} ({msg})",
                    if ready { "ready" } else { "NOT ready" }
                );
                match &generation {
                    Ok(g) => println!("ferry-dataplane: generation {g}"),
                    Err(e) => println!("ferry-dataplane: {e}"),
                }
                for s in &stale {
                    println!(
                        "stale: {} {} in {}: {}",
                        s.endpoint, s.ip, s.netns, s.reason
                    );
                }
                if let Some(c) = &cluster {
                    println!("{}", ctl::cluster_line(c));
                }
            }
            generation?;
            if !ready {
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

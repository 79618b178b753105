//! ferryd: the node agent. Thin: parses arguments, sets up logging and the
//! runtime, starts the agent and the pod-API server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use ferry_api::MacAddr;
use ferryd::cluster::member::Member;
use ferryd::cni::{Agent, Prepared};
use ferryd::config::{Config, FIELDS_HELP};
use ferryd::{metrics, server};

#[derive(Parser, Debug)]
#[command(name = "ferryd", version, about = "ferry's node agent: IPAM, pod plumbing, dataplane tables", after_help = FIELDS_HELP)]
struct Args {
    /// TOML configuration file (every field optional; see below).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print the configuration in effect (defaults, or --config's) as TOML and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Leave the cluster and exit: give up this node's block in the
    /// datastore (every peer drops its route). Stop the running ferryd
    /// first; a later start claims the same block again if it is still free.
    #[arg(long)]
    leave: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if args.print_default_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(&cfg.log_level))
        .format_timestamp_millis()
        .init();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferryd")
        .build()
        .context("start tokio runtime")?;
    if args.leave {
        return rt.block_on(leave(cfg));
    }
    rt.block_on(run(cfg))
}

async fn leave(cfg: Config) -> anyhow::Result<()> {
    if cfg.cluster.is_none() {
        anyhow::bail!(
            "--leave needs [cluster] in the configuration: a single node has no datastore to leave"
        );
    }
    let p = Agent::prepare(cfg)
        .await
        .context("check the configuration")?;
    let member = cluster_member(&p).await?;
    let blocks = member.leave().await.context("leave the cluster")?;
    match blocks.as_slice() {
        [] => println!(
            "{} held no block in {}",
            cluster_name(&p.cfg),
            member.describe()
        ),
        b => println!(
            "{} left {}: released {}",
            cluster_name(&p.cfg),
            member.describe(),
            b.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    Ok(())
}

fn cluster_name(cfg: &Config) -> String {
    cfg.cluster
        .as_ref()
        .map(|k| format!("node {:?}", k.node_name))
        .unwrap_or_default()
}

/// The `[cluster]` member of a prepared configuration (not joined yet).
async fn cluster_member(p: &Prepared) -> anyhow::Result<Arc<Member>> {
    let mac = p.uplink_mac.unwrap_or(MacAddr::ZERO);
    Member::cluster(&p.cfg, p.facts.as_ref(), mac)
        .await
        .context("datastore")
}

/// A `[cluster]` node's start: the pod API is served at once (STATUS says
/// why the node cannot take pods yet) while it joins and the agent starts.
async fn join_and_start(
    p: Prepared,
    listener: &tokio::net::UnixListener,
    requests: &Arc<metrics::RequestCounters>,
) -> anyhow::Result<Arc<Agent>> {
    let member = cluster_member(&p).await?;
    log::info!(
        "joining the cluster through {}; serving the pod API on {} meanwhile (STATUS: not ready)",
        member.describe(),
        p.cfg.socket.display()
    );
    let start = async {
        let block = member.join().await;
        let cfg = p.cfg.with_block(block);
        log::info!("pod CIDR {block}, gateway {}", cfg.gateway);
        Agent::start_with(p.netlink, cfg, Arc::clone(&member))
            .await
            .context("start ferryd")
    };
    let joining = Arc::new(server::Joining(Arc::clone(&member)));
    tokio::select! {
        agent = start => agent,
        _ = server::serve(listener, joining, Arc::clone(requests)) => {
            anyhow::bail!("the pod-API listener stopped")
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    log::info!(
        "ferryd starting: pod CIDRs {}, gateway {}, mtu {}, local_mtu {}, uplink {}, socket {}, dataplane {}",
        match &cfg.cluster {
            Some(k) => format!(
                "a /{} block of {} (claimed from the datastore)",
                k.block_len, k.cidr
            ),
            None => format!("{:?}", cfg.pod_cidrs),
        },
        if cfg.cluster.is_some() {
            "its first host".to_string()
        } else {
            cfg.gateway.to_string()
        },
        cfg.mtu_setting
            .map_or_else(|| "unset".to_string(), |m| m.to_string()),
        cfg.local_mtu,
        cfg.uplink.as_ref().map_or("none", |u| u.ifname.as_str()),
        cfg.socket.display(),
        cfg.dataplane_socket.display()
    );
    let socket = cfg.socket.clone();
    let requests = Arc::new(metrics::RequestCounters::default());
    let p = Agent::prepare(cfg).await.context("start ferryd")?;
    let (agent, listener) = if p.cfg.cluster.is_some() {
        let listener = server::bind(&socket)?;
        let agent = join_and_start(p, &listener, &requests).await?;
        (agent, listener)
    } else {
        let member = Member::embedded(&p.cfg);
        let agent = Agent::start_with(p.netlink, p.cfg, member)
            .await
            .context("start ferryd")?;
        (agent, server::bind(&socket)?)
    };
    log::info!("serving the pod API on {}", socket.display());
    // A metrics listener that cannot bind must not take pod networking
    // down with it: say so loudly and serve the pod API anyway.
    let metrics_task = match agent.config().metrics_listen {
        None => {
            log::info!("metrics endpoint disabled (metrics_listen = \"\")");
            None
        }
        Some(addr) => match metrics::bind(addr).await {
            Ok(l) => {
                log::info!("serving Prometheus metrics on http://{addr}/metrics");
                Some(tokio::spawn(metrics::serve(
                    l,
                    Arc::clone(&agent),
                    Arc::clone(&requests),
                )))
            }
            Err(e) => {
                log::error!("{e}; continuing without the metrics endpoint");
                None
            }
        },
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    tokio::select! {
        _ = server::serve(&listener, agent, requests) => {}
        _ = term.recv() => log::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: stopping"),
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

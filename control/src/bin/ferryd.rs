//! ferryd: the node agent. Thin: parses arguments, sets up logging and the
//! runtime, starts the agent and the pod-API server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use ferryd::cni::Agent;
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
    rt.block_on(run(cfg))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    log::info!(
        "ferryd starting: pod CIDRs {:?}, gateway {}, mtu {}, uplink {}, socket {}, dataplane {}",
        cfg.pod_cidrs,
        cfg.gateway,
        cfg.mtu_setting
            .map_or_else(|| "unset".to_string(), |m| m.to_string()),
        cfg.uplink.as_ref().map_or("none", |u| u.ifname.as_str()),
        cfg.socket.display(),
        cfg.dataplane_socket.display()
    );
    let socket = cfg.socket.clone();
    let agent = Agent::start(cfg).await.context("start ferryd")?;
    let listener = server::bind(&socket)?;
    log::info!("serving the pod API on {}", socket.display());
    // A metrics listener that cannot bind must not take pod networking
    // down with it: say so loudly and serve the pod API anyway.
    let requests = Arc::new(metrics::RequestCounters::default());
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
        _ = server::serve(listener, agent, requests) => {}
        _ = term.recv() => log::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: stopping"),
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

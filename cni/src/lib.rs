//! ferry-cni: the `ferry` CNI plugin (spec 0.3.0 to 1.1.0).
//!
//! Layer: the edge between a container runtime and ferryd. Depends on
//! ferry-api (the pod API types and wire framing), serde_json, ipnet and
//! thiserror.
//! It reads the CNI environment and the network configuration, validates
//! them (codes 4, 6, 7, 1), sends ONE [`PodRequest`] to ferryd over its Unix
//! socket and prints the result in the cniVersion asked, or a CNI error.
//! It must not touch netlink, namespaces (beyond checking that CNI_NETNS
//! exists), AF_XDP or any state: ferryd owns all of that.
//!
//! [`run`] is the whole plugin as a function of (environment, stdin, a way
//! to reach ferryd), so every path is tested without a socket; `main.rs`
//! only wires it to the process.

pub mod client;
pub mod conf;
pub mod env;
pub mod error;
pub mod logfile;
pub mod result;
pub mod version;

#[cfg(test)]
mod tests;

use std::path::Path;

use ferry_api::pod::{Command, IpamRequest, PodRequest, PodResponse};

pub use crate::client::ClientError;
pub use crate::env::{CniCommand, Env, Invocation};
pub use crate::error::CniError;
pub use crate::version::CniVersion;

/// How [`run`] reaches ferryd: the socket path from the config and the
/// request; [`client::call`] in the binary, a closure in tests.
pub type Ferryd<'a> = &'a dyn Fn(&Path, &PodRequest) -> Result<PodResponse, ClientError>;

/// What the plugin does for one invocation: the process exit code and what
/// to print on stdout (possibly empty).
pub fn run(env: &Env, stdin: &[u8], ferryd: Ferryd<'_>) -> (i32, String) {
    // Errors are labelled with the version asked when it is one ferry
    // speaks, else with the newest.
    let label = conf::peek_version(stdin)
        .and_then(|v| CniVersion::parse(&v).ok())
        .unwrap_or(CniVersion::LATEST);
    match execute(env, stdin, ferryd) {
        Ok(out) => (0, out),
        Err(e) => (1, result::to_text(&result::error(&e, label.as_str()))),
    }
}

fn execute(env: &Env, stdin: &[u8], ferryd: Ferryd<'_>) -> Result<String, CniError> {
    let command = match CniCommand::from_env(env)? {
        CniCommand::Add => Command::Add,
        CniCommand::Del => Command::Del,
        CniCommand::Check => Command::Check,
        CniCommand::Status => Command::Status,
        CniCommand::Gc => Command::Gc,
        CniCommand::Version => {
            let asked = conf::peek_version(stdin)
                .unwrap_or_else(|| CniVersion::LATEST.as_str().to_string());
            return Ok(result::to_text(&result::version_info(&asked)));
        }
    };
    let inv = Invocation::from_env(env)?;
    let name = inv.command;

    let version = conf::parse_version(stdin)?;
    let needs = match command {
        Command::Check => Some(CniVersion::V0_4_0),
        Command::Status | Command::Gc => Some(CniVersion::V1_1_0),
        Command::Add | Command::Del => None,
    };
    if let Some(min) = needs.filter(|min| version < *min) {
        return Err(CniError::incompatible_version(format!(
            "CNI_COMMAND={name} needs cniVersion {min} or newer; the configuration says {version}"
        )));
    }
    let conf = if command == Command::Del {
        conf::parse_for_del(stdin)?
    } else {
        let conf = conf::parse(stdin)?;
        // `parse` accepted stdin as a JSON object; a log field present but
        // wrong is a config error like any other (DEL ignores them).
        if let Ok(serde_json::Value::Object(root)) = serde_json::from_slice(stdin) {
            logfile::LogConf::validate(&root)?;
        }
        conf
    };

    let mut req = PodRequest {
        command,
        network: conf.name.clone(),
        container_id: inv.container_id.clone(),
        netns: inv.netns.clone(),
        ifname: inv.ifname.clone(),
        args: inv.args.clone(),
        ipam: IpamRequest::default(),
        mtu: conf.mtu,
        attachment: conf.attachment,
        valid_attachments: Vec::new(),
        prev_result: None,
        deadline_ms: None,
    };
    match command {
        Command::Add | Command::Check | Command::Del => {
            if command != Command::Del {
                inv.check_netns_exists()?;
            }
            // DEL releases by container id and ifname; the addresses asked
            // for at ADD do not matter (and must not make DEL fail).
            let mut requested = if command == Command::Del {
                Vec::new()
            } else {
                inv.requested_ips()?
            };
            for ip in &conf.runtime_ips {
                if !requested.contains(ip) {
                    requested.push(*ip);
                }
            }
            req.ipam = IpamRequest {
                ranges: conf.ipam.ranges.clone(),
                routes: conf.ipam.routes.clone(),
                requested,
            };
            if command == Command::Check {
                let prev = conf.prev_result.as_ref().ok_or_else(|| {
                    CniError::invalid_config(
                        "required prevResult missing: CHECK needs the result of the ADD",
                    )
                })?;
                req.prev_result = Some(conf::parse_prev_result(prev, version)?);
            }
        }
        Command::Status => {}
        Command::Gc => {
            req.valid_attachments = conf.valid_attachments.clone().ok_or_else(|| {
                CniError::invalid_config(format!(
                    "required field `{}` missing: GC releases every attachment not listed there, so it \
                     refuses to guess",
                    conf::VALID_ATTACHMENTS_KEY
                ))
            })?;
        }
    }

    let socket = conf.ferryd_socket.as_path();
    let response = match ferryd(socket, &req) {
        Ok(r) => r,
        Err(e) => return Err(client_error(name, socket, &e)),
    };
    match (command, response) {
        (_, PodResponse::Error(e)) => Err(e.into()),
        (Command::Add, PodResponse::Ok { result: Some(r) }) => Ok(result::to_text(
            &result::add_result(&r, version, conf.dns.as_ref()),
        )),
        (Command::Add, PodResponse::Ok { result: None }) => {
            Err(unexpected(socket, name, "a success without the ADD result"))
        }
        (Command::Del | Command::Check | Command::Gc, PodResponse::Ok { .. }) => Ok(String::new()),
        (Command::Status, PodResponse::Status { ready: true, .. }) => Ok(String::new()),
        (
            Command::Status,
            PodResponse::Status {
                ready: false,
                msg,
                code,
                ..
            },
        ) => Err(status_error(code, msg)),
        (Command::Status, PodResponse::Ok { .. }) => {
            Err(unexpected(socket, name, "a plain success"))
        }
        (_, PodResponse::Status { .. }) => Err(unexpected(socket, name, "a STATUS answer")),
    }
}

/// A not-ready STATUS: 51 (limited connectivity) when ferryd says so,
/// else 50 (not available).
fn status_error(code: u32, msg: String) -> CniError {
    let msg = format!("ferryd is not ready: {msg}");
    if code == ferry_api::pod::code::LIMITED_CONNECTIVITY {
        CniError::limited_connectivity(msg)
    } else {
        CniError::not_available(msg)
    }
}

fn unexpected(socket: &Path, command: CniCommand, what: &str) -> CniError {
    CniError::io(format!(
        "ferryd at {} answered CNI_COMMAND={command} with {what}; ferry and ferryd versions may not match",
        socket.display()
    ))
}

/// Unreachable ferryd: 11 (the runtime retries; DEL too, since releasing
/// state is ferryd's job), except STATUS, which says "not available" (50).
fn client_error(command: CniCommand, socket: &Path, e: &ClientError) -> CniError {
    let path = socket.display();
    if e.is_unreachable() {
        let msg = format!("ferryd is not reachable at {path}: {e}; is ferryd running?");
        return if command == CniCommand::Status {
            CniError::not_available(msg)
        } else {
            CniError::try_again_later(msg)
        };
    }
    match e {
        ClientError::ReplyTimeout { timeout, .. } => {
            let msg = format!(
                "ferryd at {path} did not answer CNI_COMMAND={command} within {} s; try again",
                timeout.as_secs()
            );
            if command == CniCommand::Status {
                CniError::not_available(msg)
            } else {
                CniError::try_again_later(msg)
            }
        }
        other => CniError::io(format!(
            "ferryd at {path} sent a reply ferry cannot read; ferry and ferryd versions may not match"
        ))
        .with_details(other.to_string()),
    }
}

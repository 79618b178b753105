//! The in-kernel XDP redirect topology's program: C source shipped in the
//! binary, compiled with clang at run time, loaded and attached with aya.

use std::path::Path;

use aya::maps::DevMapHash;
use aya::programs::{Xdp, XdpFlags};
use aya::Ebpf;

use super::error::{E2eError, Result};
use super::sys::{self, in_netns};

/// The C source of the redirect and pass programs.
pub const SOURCE: &str = include_str!("xdp_redirect.c");

/// Compile [`SOURCE`] into `dir` and return the object's bytes.
pub fn compile(dir: &Path) -> Result<Vec<u8>> {
    compile_source(dir, "xdp_redirect", SOURCE)
}

/// Compile the C `source` of XDP programs as `dir/<stem>.c` and return the
/// object's bytes.
pub fn compile_source(dir: &Path, stem: &str, source: &str) -> Result<Vec<u8>> {
    let src = dir.join(format!("{stem}.c"));
    let obj = dir.join(format!("{stem}.o"));
    std::fs::write(&src, source)
        .map_err(|e| E2eError::io(format!("write {}", src.display()), e))?;
    let out = sys::run(
        "clang",
        &[
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-c",
            &src.to_string_lossy(),
            "-o",
            &obj.to_string_lossy(),
        ],
    )
    .map_err(|e| E2eError::Xdp(format!("cannot run clang (apt-get install clang): {e}")))?;
    if !out.ok() {
        return Err(E2eError::Xdp(format!(
            "clang failed: {}",
            out.stderr.trim()
        )));
    }
    std::fs::read(&obj).map_err(|e| E2eError::io(format!("read {}", obj.display()), e))
}

/// The loaded programs; dropping it detaches every attachment (they are bpf links
/// owned by this process) and unloads the programs.
pub struct XdpRedirect {
    ebpf: Ebpf,
}

impl std::fmt::Debug for XdpRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XdpRedirect")
    }
}

impl XdpRedirect {
    /// Load both programs from a compiled object.
    pub fn load(object: &[u8]) -> Result<XdpRedirect> {
        let mut ebpf =
            Ebpf::load(object).map_err(|e| E2eError::Xdp(format!("load object: {e}")))?;
        for name in ["xdp_redirect_peer", "xdp_pass"] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| E2eError::Xdp(format!("no program {name}")))?
                .try_into()
                .map_err(|e| E2eError::Xdp(format!("{name} is not XDP: {e}")))?;
            p.load()
                .map_err(|e| E2eError::Xdp(format!("load {name}: {e}")))?;
        }
        Ok(XdpRedirect { ebpf })
    }

    fn attach(&mut self, prog: &str, ns: &str, ifname: &str) -> Result<u32> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| E2eError::Xdp(format!("no program {prog}")))?
            .try_into()
            .map_err(|e| E2eError::Xdp(format!("{prog} is not XDP: {e}")))?;
        in_netns(ns, || {
            let idx = ifindex(ifname)?;
            p.attach_to_if_index(idx, XdpFlags::DRV_MODE)
                .map_err(|e| E2eError::Xdp(format!("attach {prog} to {ifname} in {ns}: {e}")))?;
            Ok(idx)
        })
    }

    /// Attach the pass program (needed on the receiving end of a veth redirect).
    pub fn attach_pass(&mut self, ns: &str, ifname: &str) -> Result<()> {
        self.attach("xdp_pass", ns, ifname).map(|_| ())
    }

    /// Attach the redirect program to both host ends and cross-connect them.
    pub fn connect(&mut self, node_ns: &str, a: &str, b: &str) -> Result<()> {
        let ia = self.attach("xdp_redirect_peer", node_ns, a)?;
        let ib = self.attach("xdp_redirect_peer", node_ns, b)?;
        let mut map: DevMapHash<_> = self
            .ebpf
            .map_mut("peer")
            .ok_or_else(|| E2eError::Xdp("no map `peer`".into()))?
            .try_into()
            .map_err(|e| E2eError::Xdp(format!("map `peer`: {e}")))?;
        // The kernel resolves a DEVMAP entry's ifindex in the network namespace of
        // the task updating the map: update it from inside the node namespace, or
        // the entries would name the root namespace's interfaces.
        in_netns(node_ns, || {
            map.insert(ia, ib, None, 0)
                .map_err(|e| E2eError::Xdp(format!("map insert: {e}")))?;
            map.insert(ib, ia, None, 0)
                .map_err(|e| E2eError::Xdp(format!("map insert: {e}")))
        })
    }
}

/// Whether `clang` runs here (tests that compile the programs need it).
pub fn clang_present() -> bool {
    sys::run("clang", &["--version"])
        .map(|o| o.ok())
        .unwrap_or(false)
}

/// if_nametoindex in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Result<u32> {
    let c = std::ffi::CString::new(ifname)
        .map_err(|_| E2eError::Xdp(format!("bad interface name {ifname:?}")))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(E2eError::io(
            format!("if_nametoindex {ifname}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_compiles_when_clang_is_present() {
        if clang_present() {
            let dir = sys::TempDir::create(&format!("xdptest{}", std::process::id())).unwrap();
            let obj = compile(&dir.path).unwrap();
            assert_eq!(&obj[..4], b"\x7fELF", "clang produced an ELF object");
        } else {
            assert!(compile(Path::new("/nonexistent")).is_err());
        }
    }
}

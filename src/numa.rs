//! NUMA placement: which node a CPU belongs to (sysfs), a worker thread's
//! memory policy (set_mempolicy(2), get_mempolicy(2)), and which node a
//! page actually sits on (move_pages(2) with no target: a query).
//!
//! A pinned worker allocates and first touches its own memory, so under
//! the default policy it lands on the worker's node anyway; an explicit
//! policy also overrides one inherited from the parent (`numactl
//! --interleave=all coreloop` would otherwise interleave every core's
//! buffers) and makes the placement something an experiment can vary.
#![allow(unsafe_code)]

use std::io;
use std::path::Path;

/// `--numa`: the memory policy of each worker thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// `local` when the host has more than one node with memory and the
    /// workers are pinned, else `off`.
    #[default]
    Auto,
    /// Leave the policy the process inherited (the kernel's default:
    /// allocate on the node of the CPU that first touches a page).
    Off,
    /// Prefer the node of the worker's CPU; fall back to others when it is
    /// full (MPOL_PREFERRED).
    Local,
    /// Only the node of the worker's CPU; allocation fails (and the kernel
    /// reclaims or kills) when it is full (MPOL_BIND).
    Bind,
    /// Spread pages across every node with memory (MPOL_INTERLEAVE): the
    /// baseline a placement experiment compares against.
    Interleave,
}

impl Policy {
    /// The flag's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Auto => "auto",
            Policy::Off => "off",
            Policy::Local => "local",
            Policy::Bind => "bind",
            Policy::Interleave => "interleave",
        }
    }

    /// Resolves `Auto` for this host: `Local` with pinned workers on more
    /// than one node, else `Off`.
    pub fn resolve(self, nodes: usize, pinned: bool) -> Policy {
        match self {
            Policy::Auto if nodes > 1 && pinned => Policy::Local,
            Policy::Auto => Policy::Off,
            other => other,
        }
    }
}

// Modes and flags from <linux/mempolicy.h>.
const MPOL_DEFAULT: i32 = 0;
const MPOL_PREFERRED: i32 = 1;
const MPOL_BIND: i32 = 2;
const MPOL_INTERLEAVE: i32 = 3;
const MPOL_LOCAL: i32 = 4;

/// Node masks as the kernel reads them: 1024 bits.
const MASK_WORDS: usize = 16;
/// The kernel reads `maxnode - 1` bits (a historical off-by-one that
/// numactl also passes for).
const MAX_NODE: libc::c_ulong = (MASK_WORDS * 64 + 1) as libc::c_ulong;

type NodeMask = [libc::c_ulong; MASK_WORDS];

/// The nodes with memory (`/sys/devices/system/node/has_memory`); `[0]`
/// when the kernel has no NUMA support or the file is missing.
pub fn memory_nodes() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/node/has_memory")
        .ok()
        .and_then(|text| crate::topology::parse_cpu_list(text.trim()).ok())
        .filter(|nodes| !nodes.is_empty())
        .unwrap_or_else(|| vec![0])
}

/// The node of `cpu`: the `nodeN` entry in its sysfs directory.
pub fn node_of_cpu(cpu: usize) -> Option<usize> {
    node_of_cpu_in(Path::new("/sys/devices/system/cpu"), cpu)
}

fn node_of_cpu_in(root: &Path, cpu: usize) -> Option<usize> {
    std::fs::read_dir(root.join(format!("cpu{cpu}")))
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("node")?
                .parse()
                .ok()
        })
}

/// Sets the calling thread's memory policy for a worker on `node`.
/// `Off` (and `Auto`, which the caller resolves first) changes nothing.
pub fn apply(policy: Policy, node: usize, all: &[usize]) -> io::Result<()> {
    let (mode, nodes): (i32, &[usize]) = match policy {
        Policy::Auto | Policy::Off => return Ok(()),
        Policy::Local => (MPOL_PREFERRED, std::slice::from_ref(&node)),
        Policy::Bind => (MPOL_BIND, std::slice::from_ref(&node)),
        Policy::Interleave => (MPOL_INTERLEAVE, all),
    };
    let mask = mask_of(nodes)?;
    // SAFETY: `mask` is a live array of MASK_WORDS words, and MAX_NODE - 1
    // bits fit in it; the kernel only reads it.
    let rc = unsafe { libc::syscall(libc::SYS_set_mempolicy, mode, mask.as_ptr(), MAX_NODE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's memory policy as the kernel reads it back, e.g.
/// `preferred 0`, `interleave 0-1`, `default`.
pub fn current() -> io::Result<String> {
    let mut mode: i32 = -1;
    let mut mask: NodeMask = [0; MASK_WORDS];
    // SAFETY: `mode` and `mask` are live and writable, `mask` holds
    // MAX_NODE - 1 bits; a null address with flags 0 asks for the thread's
    // own policy.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut i32,
            mask.as_mut_ptr(),
            MAX_NODE,
            std::ptr::null_mut::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let name = match mode {
        MPOL_DEFAULT => return Ok("default".into()),
        MPOL_LOCAL => return Ok("local".into()),
        MPOL_PREFERRED => "preferred",
        MPOL_BIND => "bind",
        MPOL_INTERLEAVE => "interleave",
        _ => "other",
    };
    Ok(format!("{name} {}", list_of(&mask)))
}

/// The node the page holding `addr` sits on, or `None` when it is not in
/// memory yet (or the kernel cannot say).
pub fn node_of_page(addr: *const u8) -> Option<usize> {
    let mut pages = [addr.cast::<libc::c_void>().cast_mut()];
    let mut status: [i32; 1] = [-1];
    // SAFETY: one page pointer and one status slot, both live; a null
    // `nodes` array makes move_pages only report where pages are (it moves
    // nothing and never writes to the pages).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            1 as libc::c_ulong,
            pages.as_mut_ptr(),
            std::ptr::null::<i32>(),
            status.as_mut_ptr(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    usize::try_from(status[0]).ok()
}

fn mask_of(nodes: &[usize]) -> io::Result<NodeMask> {
    let mut mask: NodeMask = [0; MASK_WORDS];
    for &n in nodes {
        let word = mask.get_mut(n / 64).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NUMA node {n} out of range"),
            )
        })?;
        *word |= 1 << (n % 64);
    }
    Ok(mask)
}

/// `0-1,3` for a node mask.
fn list_of(mask: &NodeMask) -> String {
    let set = |n: usize| mask[n / 64] & (1 << (n % 64)) != 0;
    let mut out = String::new();
    let mut n = 0;
    while n < MASK_WORDS * 64 {
        if !set(n) {
            n += 1;
            continue;
        }
        let start = n;
        while n + 1 < MASK_WORDS * 64 && set(n + 1) {
            n += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == n {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{n}"));
        }
        n += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_local_only_on_many_nodes_when_pinned() {
        assert_eq!(Policy::Auto.resolve(2, true), Policy::Local);
        assert_eq!(Policy::Auto.resolve(1, true), Policy::Off);
        assert_eq!(Policy::Auto.resolve(2, false), Policy::Off);
        assert_eq!(Policy::Bind.resolve(1, false), Policy::Bind);
    }

    #[test]
    fn masks_round_trip() {
        let mask = mask_of(&[0, 1, 3, 64, 65, 66]).unwrap();
        assert_eq!(list_of(&mask), "0-1,3,64-66");
        assert!(mask_of(&[MASK_WORDS * 64]).is_err());
    }

    #[test]
    fn cpu_node_from_a_fixture_tree() {
        let root = std::env::temp_dir().join(format!("coreloop-numa-{}", std::process::id()));
        std::fs::create_dir_all(root.join("cpu3/node1")).unwrap();
        std::fs::create_dir_all(root.join("cpu3/cache")).unwrap();
        std::fs::create_dir_all(root.join("cpu4")).unwrap();
        assert_eq!(node_of_cpu_in(&root, 3), Some(1));
        assert_eq!(node_of_cpu_in(&root, 4), None);
        assert_eq!(node_of_cpu_in(&root, 5), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Runs in its own thread: the policy is per thread.
    #[test]
    fn policy_is_read_back_and_pages_found() {
        std::thread::spawn(|| {
            let node = memory_nodes()[0];
            apply(Policy::Local, node, &[node]).unwrap();
            assert_eq!(current().unwrap(), format!("preferred {node}"));
            apply(Policy::Interleave, node, &memory_nodes()).unwrap();
            assert!(current().unwrap().starts_with("interleave "));
            let page = vec![1u8; 4096];
            assert_eq!(node_of_page(page.as_ptr()), Some(node));
        })
        .join()
        .unwrap();
    }
}

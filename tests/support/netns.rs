//! A small network of hosts for tests across machines: one network namespace per host, each
//! with `lo` up and one veth link to a bridge that lives in a namespace of its own, so the
//! machine's own namespace gets no new interface. Addresses come from 198.18.0.0/15, the range
//! set aside for network tests: one /24 per network, picked from the process id and a counter.
//! Every namespace is deleted when the [`Network`] drops, also when a test panics; one left by
//! a test run that was killed is deleted by the next run.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Proc;

/// Every namespace made here is named `minilb-<pid>-<n>-<host>`.
const PREFIX: &str = "minilb-";

/// A host of a [`Network`].
pub struct Host {
    /// Its network namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its end of the link, in the bridge's namespace (cut with [`Network::set_link`]).
    port: String,
}

/// Hosts on one bridge; deleted on drop.
pub struct Network {
    /// The namespace holding the bridge.
    bridge: String,
    pub hosts: Vec<Host>,
}

impl Network {
    /// Builds a network of `names` hosts (198.18.x.1 is the first). Without root, `ip`, or
    /// network namespaces in this sandbox it prints one line saying the test is skipped, and
    /// returns `None`.
    pub fn new(test: &str, names: &[&str]) -> Option<Network> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        delete_stale();
        let pid = std::process::id();
        let subnet = (pid as usize * 4 + n) % 512;
        let base = Ipv4Addr::new(198, 18 + (subnet / 256) as u8, (subnet % 256) as u8, 0);
        let name = |host: &str| format!("{PREFIX}{pid}-{n}-{host}");
        let hosts = (names.iter().enumerate())
            .map(|(i, host)| Host {
                ns: name(host),
                ip: Ipv4Addr::from(u32::from(base) + i as u32 + 1),
                port: format!("h{i}"),
            })
            .collect();
        let net = Network { bridge: name("bridge"), hosts };
        // Leftovers with these names (a run killed before its clean-up) go first.
        net.delete();
        if let Err(e) = net.build() {
            // Straight to stderr, past the test harness's capture: a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: cannot build a network of namespaces here (needs root and iproute2): {e}"
            );
            return None;
        }
        Some(net)
    }

    fn build(&self) -> Result<(), String> {
        let br = self.bridge.as_str();
        ip(&["netns", "add", br])?;
        ip(&["-n", br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", br, "link", "set", "br0", "up"])?;
        for h in &self.hosts {
            let (ns, port) = (h.ns.as_str(), h.port.as_str());
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // Made in the bridge's namespace, the host's end moved into the host at once.
            ip(&[
                "-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["-n", br, "link", "set", port, "master", "br0", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{}/24", h.ip), "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// The host named `name` (as given to [`Network::new`]).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.ns.ends_with(&format!("-{name}")))
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// `program args` to run on host `name`.
    pub fn command(&self, name: &str, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.host(name).ns, program])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Starts `bin` on host `name` as [`super::spawn`] does (its log in `cwd/<log>`).
    pub fn spawn(
        &self,
        name: &str,
        bin: &str,
        args: &[&str],
        cwd: &Path,
        log: &str,
        lines: usize,
    ) -> Proc {
        let mut all: Vec<String> =
            ["netns", "exec", &self.host(name).ns, bin].map(String::from).to_vec();
        all.extend(args.iter().map(|a| a.to_string()));
        super::spawn("ip", &all, cwd.join(log), cwd, lines)
    }

    /// Runs `f` on a thread inside host `name`'s namespace: the sockets it opens belong to
    /// that host for their whole life, whichever thread uses them later.
    pub fn on<T: Send>(&self, name: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.host(name).ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = fs::File::open(&path).unwrap();
                let net = Some(rustix::thread::LinkNameSpaceType::Network);
                rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(&ns), net)
                    .unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Cuts (`up` false) or restores host `name`'s link, at the bridge: a cable pulled out of
    /// the switch, so the host's packets vanish without an error.
    pub fn set_link(&self, name: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.bridge, "link", "set", &self.host(name).port, state]).unwrap();
    }

    fn delete(&self) {
        for ns in self.hosts.iter().map(|h| &h.ns).chain([&self.bridge]) {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Deletes the namespaces of test runs whose process is gone (killed before it cleaned up).
fn delete_stale() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next());
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// Runs `ip args`; its error output on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
}

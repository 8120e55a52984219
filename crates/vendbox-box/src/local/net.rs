//! Network egress of local boxes: a network namespace per box, made and owned by the host,
//! linked to it by a veth pair, with the policy in one nftables table per vendbox instance.
//!
//! Why veth + nftables rather than a user-mode stack (pasta, slirp4netns): the policy is
//! enforced by the host's kernel on a path the box cannot touch. The namespace belongs to the
//! host's user namespace, so root in the box has no `CAP_NET_ADMIN` or `CAP_NET_RAW` in it: it
//! cannot change its address, routes or queueing, nor craft raw packets. Every packet a box sends
//! crosses the host's forward (or input) hook, where the table decides by destination:
//!
//! - the host itself (any of its addresses, the box's gateway included) is refused, except the
//!   configured resolvers' port 53;
//! - private, shared, loopback, link-local (cloud metadata), multicast and reserved IPv4 ranges,
//!   the networks the host is attached to, other boxes and the operator's `deny` list are
//!   refused; the operator's `allow` list opens exceptions; the rest (the public internet) is
//!   reachable, masqueraded behind the host's address;
//! - boxes get IPv4 only: IPv6 is off on both ends of the link and refused by the table;
//! - each box may hold `max_connections` connections at once (`ct count`), and its link is
//!   shaped to `bandwidth_mbit` each way (a token bucket on both ends of the veth).
//!
//! Names derive from the instance and the box id, so everything a box had can be found and
//! removed without its record: [`detach`] on destruction, [`Network::repair`] at start-up.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::BoxId;
use crate::error::BoxError;

/// Where `ip netns` keeps named network namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Destinations no box reaches unless the operator's `allow` list names them: "this network",
/// private (RFC 1918), shared (carrier-grade NAT), loopback, link-local (cloud metadata lives
/// at 169.254.169.254), IETF protocol assignments, benchmarking, multicast and reserved space
/// (the limited broadcast address included).
pub const REFUSED_RANGES: [&str; 11] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// An IPv4 prefix (`203.0.113.0/24`, or an address alone for a /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// The network's first address.
    pub addr: Ipv4Addr,
    /// Its length in bits.
    pub len: u8,
}

impl Prefix {
    /// How many addresses the prefix holds.
    pub fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    /// The `n`th address of the prefix, if it holds that many.
    pub fn nth(self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size())
            .then(|| Ipv4Addr::from(u32::from(self.addr).wrapping_add(u32::try_from(n).unwrap_or(0))))
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Prefix, String> {
        let (addr, len) = text.split_once('/').unwrap_or((text, "32"));
        let addr: Ipv4Addr = addr.trim().parse().map_err(|_| {
            format!("`{text}` is not an IPv4 address or prefix (boxes have IPv4 egress only)")
        })?;
        let len: u8 = len
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("`{text}`: bad prefix length"))?;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
        Ok(Prefix { addr: Ipv4Addr::from(u32::from(addr) & mask), len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Prefix, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[egress]` of `vendbox.toml`: whether boxes whose offer includes egress get it, and the
/// policy they get it under.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Whether offers with egress are sold with it; `false` sells every box without network.
    pub enabled: bool,
    /// The addresses boxes take their links from: two per box (host end, box end), so a /14
    /// holds every box a host can run. It must not overlap the host's networks.
    pub subnet: Prefix,
    /// DNS resolvers boxes use (their `/etc/resolv.conf`), reachable on port 53 whatever the
    /// policy says of their addresses. Empty: the host's own non-loopback resolvers.
    pub resolvers: Vec<Ipv4Addr>,
    /// Destinations opened despite the refused ranges (a private package mirror).
    pub allow: Vec<Prefix>,
    /// Destinations refused in addition to the refused ranges.
    pub deny: Vec<Prefix>,
    /// Whether the public internet is reachable; `false` leaves only `allow` and the resolvers.
    pub public: bool,
    /// Each box's bandwidth each way, in Mbit/s; 0: uncapped.
    pub bandwidth_mbit: u32,
    /// Connections (TCP, UDP flows) a box may hold open at once; 0: uncapped.
    pub max_connections: u32,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            enabled: true,
            subnet: Prefix { addr: Ipv4Addr::new(10, 200, 0, 0), len: 14 },
            resolvers: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            public: true,
            bandwidth_mbit: 100,
            max_connections: 512,
        }
    }
}

/// A vendbox instance's egress: its policy table is in place and boxes can be attached.
#[derive(Debug)]
pub(crate) struct Network {
    config: EgressConfig,
    instance: String,
    resolvers: Vec<Ipv4Addr>,
    /// The `resolv.conf` every box of the instance reads (bound over its `/etc/resolv.conf`).
    resolv_conf: PathBuf,
    /// The host's networks the policy table was made with, once it, forwarding and
    /// `resolv.conf` are in place: they are put there by the first box with egress (or at
    /// start-up, when boxes with egress live), so that a vendbox that never sells one changes
    /// nothing on the host. Each box's own table refuses the same networks.
    installed: tokio::sync::Mutex<Option<Vec<Prefix>>>,
}

/// The names and addresses of one box's link.
#[derive(Debug, Clone)]
struct Link {
    /// The named network namespace (`/run/netns/NAME`).
    netns: String,
    /// The host end of the veth pair.
    host_if: String,
    gateway: Ipv4Addr,
    address: Ipv4Addr,
}

/// The interface-name prefix of an instance's box links (`v` and 5 hex digits), which the
/// table's rules match.
fn if_prefix(instance: &str) -> String {
    format!("v{}", &instance[..instance.len().min(5)])
}

fn netns_prefix(instance: &str) -> String {
    format!("vendbox-{instance}-")
}

fn table_name(instance: &str) -> String {
    format!("vendbox_{instance}")
}

/// The names of the network of `name` (a box's id, or a warm slot's name): its namespace, the
/// host's end of its link, and the name the box's end had in older versions.
fn link_names(instance: &str, name: &str) -> (String, String, String) {
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..4]);
    let prefix = if_prefix(instance);
    (format!("{}{}", netns_prefix(instance), name), format!("{prefix}x{hash}"), format!("{prefix}y{hash}"))
}

impl Network {
    /// Checks the host's tools and that it can hold the policy, and repairs what earlier runs
    /// left, given the boxes that still exist (`live`); the policy goes in place at once when
    /// boxes with egress live, else with the first one ([`Network::install`]).
    pub(crate) async fn start(
        config: EgressConfig,
        instance: &str,
        run_root: &Path,
        live: &dyn Fn(&BoxId) -> bool,
    ) -> Result<Network, BoxError> {
        for tool in ["ip", "nft", "tc"] {
            if super::find_program(tool).is_none() {
                return Err(BoxError::Unsupported(format!(
                    "box egress needs `{tool}` (apt-get install iproute2 nftables)"
                )));
            }
        }
        if config.subnet.len > 30 {
            return Err(BoxError::Unsupported(format!("the egress subnet {} is too small", config.subnet)));
        }
        let resolvers = if config.resolvers.is_empty() { host_resolvers() } else { config.resolvers.clone() };
        if resolvers.is_empty() {
            tracing::warn!(
                "boxes with egress get no DNS: set [egress] resolvers (the host's are loopback only)"
            );
        }
        let resolv_conf = run_root.join(format!("net-{instance}")).join("resolv.conf");
        let network = Network {
            config,
            instance: instance.to_owned(),
            resolvers,
            resolv_conf,
            installed: tokio::sync::Mutex::new(None),
        };
        // The table is checked now (`nft -c` changes nothing), so that a host whose kernel or
        // nft cannot hold it says so at start-up rather than at a purchase.
        let table = network.table(&attached_networks(&if_prefix(instance)));
        run_with_input("nft", &["-c", "-f", "-"], &table).await?;
        if network.repair(live).await {
            network.install().await?;
        } else {
            // An earlier run's table and files, for boxes that are all gone.
            remove_instance(instance, run_root).await;
        }
        Ok(network)
    }

    /// Puts the policy table (replacing an earlier one), IPv4 forwarding and the boxes'
    /// `resolv.conf` in place, once; the host's networks the table refuses.
    async fn install(&self) -> Result<Vec<Prefix>, BoxError> {
        let mut installed = self.installed.lock().await;
        if let Some(attached) = installed.as_ref() {
            return Ok(attached.clone());
        }
        let Some(dir) = self.resolv_conf.parent() else {
            return Err(BoxError::Start("the boxes' resolv.conf has no directory".into()));
        };
        std::fs::create_dir_all(dir).map_err(BoxError::io(format!("creating {}", dir.display())))?;
        set_mode(dir, 0o711)?;
        let text: String = self
            .resolvers
            .iter()
            .flat_map(|r| ["nameserver ".to_owned(), r.to_string(), "\n".to_owned()])
            .collect();
        std::fs::write(&self.resolv_conf, text).map_err(BoxError::io("writing the boxes' resolv.conf"))?;
        set_mode(&self.resolv_conf, 0o644)?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(BoxError::io("turning on IPv4 forwarding"))?;
        let attached = attached_networks(&if_prefix(&self.instance));
        run_with_input("nft", &["-f", "-"], &self.table(&attached)).await?;
        *installed = Some(attached.clone());
        Ok(attached)
    }

    /// The instance's nftables table, whole: deleting and adding it in one transaction replaces
    /// an earlier version atomically.
    fn table(&self, attached: &[Prefix]) -> String {
        let c = &self.config;
        let name = table_name(&self.instance);
        let boxes = format!("\"{}*\"", if_prefix(&self.instance));
        let deny = self.refused(attached);
        let resolvers = self.resolvers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let allow = c.allow.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let refuse = "reject with icmpx type admin-prohibited";
        let interval = "type ipv4_addr; flags interval; auto-merge;";
        let mut t = vec![
            format!("table inet {name}"),
            format!("delete table inet {name}"),
            format!("table inet {name} {{"),
            format!("  set refused {{ {interval} elements = {{ {} }} }}", deny.join(", ")),
            "  set connections { type ipv4_addr; size 65535; flags dynamic; }".to_owned(),
        ];
        if !allow.is_empty() {
            t.push(format!("  set allowed {{ {interval} elements = {{ {allow} }} }}"));
        }
        if !resolvers.is_empty() {
            t.push(format!("  set resolvers {{ type ipv4_addr; elements = {{ {resolvers} }} }}"));
        }
        let dns = "meta l4proto { tcp, udp } th dport 53";
        // To the host itself: only replies, and DNS where a resolver is one of its addresses.
        t.push("  chain input {".into());
        t.push("    type filter hook input priority filter - 5; policy accept;".into());
        t.push(format!("    iifname {boxes} ct state established,related accept"));
        if !resolvers.is_empty() {
            t.push(format!("    iifname {boxes} ip daddr @resolvers {dns} accept"));
        }
        t.push(format!("    iifname {boxes} {refuse}"));
        t.push("  }".into());
        // Through the host: the policy for what boxes start; nothing starts into a box.
        t.push("  chain forward {".into());
        t.push("    type filter hook forward priority filter - 5; policy accept;".into());
        t.push(format!("    iifname {boxes} jump from_box"));
        t.push(format!("    oifname {boxes} ct state established,related accept"));
        t.push(format!("    oifname {boxes} drop"));
        t.push("  }".into());
        t.push("  chain from_box {".into());
        t.push("    ct state established,related accept".into());
        t.push(format!("    meta nfproto != ipv4 {refuse}"));
        t.push(format!("    ip saddr != {} drop", c.subnet));
        if !resolvers.is_empty() {
            t.push(format!("    ip daddr @resolvers {dns} jump admit"));
        }
        if !allow.is_empty() {
            t.push("    ip daddr @allowed jump admit".into());
        }
        t.push(format!("    ip daddr @refused {refuse}"));
        if !c.public {
            t.push(format!("    {refuse}"));
        }
        t.push("    jump admit".into());
        t.push("  }".into());
        t.push("  chain admit {".into());
        if c.max_connections > 0 {
            t.push(format!(
                "    ct state new add @connections {{ ip saddr ct count over {} }} {refuse}",
                c.max_connections
            ));
        }
        t.push("    accept".into());
        t.push("  }".into());
        t.push("  chain postrouting {".into());
        t.push("    type nat hook postrouting priority srcnat; policy accept;".into());
        t.push(format!("    ip saddr {} oifname != {boxes} masquerade", c.subnet));
        t.push("  }".into());
        t.push("}".into());
        t.join("\n") + "\n"
    }

    /// Every destination refused unless allowed: the refused ranges, the operator's deny list,
    /// the host's networks and the boxes' subnet.
    fn refused(&self, attached: &[Prefix]) -> Vec<String> {
        let mut deny: Vec<String> = REFUSED_RANGES.iter().map(|s| (*s).to_owned()).collect();
        deny.extend(self.config.deny.iter().chain(attached).map(ToString::to_string));
        deny.push(self.config.subnet.to_string());
        deny
    }

    /// The same policy inside a box's namespace, on what it sends: the box cannot change it (the
    /// namespace is the host's), and it holds if the host's table is flushed (a firewall
    /// reload), so that a box fails closed. Masquerading stays the host's.
    fn box_table(&self, attached: &[Prefix]) -> String {
        let c = &self.config;
        let refuse = "reject with icmpx type admin-prohibited";
        let interval = "type ipv4_addr; flags interval; auto-merge;";
        let mut t = vec![
            "table inet vendbox {".to_owned(),
            format!("  set refused {{ {interval} elements = {{ {} }} }}", self.refused(attached).join(", ")),
            "  set connections { type ipv4_addr; size 16; flags dynamic; }".to_owned(),
        ];
        if !c.allow.is_empty() {
            let allow = c.allow.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            t.push(format!("  set allowed {{ {interval} elements = {{ {allow} }} }}"));
        }
        if !self.resolvers.is_empty() {
            let resolvers = self.resolvers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            t.push(format!("  set resolvers {{ type ipv4_addr; elements = {{ {resolvers} }} }}"));
        }
        t.push("  chain output {".into());
        t.push("    type filter hook output priority filter; policy accept;".into());
        t.push("    oif lo accept".into());
        t.push("    ct state established,related accept".into());
        t.push(format!("    meta nfproto != ipv4 {refuse}"));
        if !self.resolvers.is_empty() {
            t.push("    ip daddr @resolvers meta l4proto { tcp, udp } th dport 53 jump admit".into());
        }
        if !c.allow.is_empty() {
            t.push("    ip daddr @allowed jump admit".into());
        }
        t.push(format!("    ip daddr @refused {refuse}"));
        if !c.public {
            t.push(format!("    {refuse}"));
        }
        t.push("    jump admit".into());
        t.push("  }".into());
        t.push("  chain admit {".into());
        if c.max_connections > 0 {
            t.push(format!(
                "    ct state new add @connections {{ ip saddr ct count over {} }} {refuse}",
                c.max_connections
            ));
        }
        t.push("    accept".into());
        t.push("  }".into());
        t.push("}".into());
        t.join("\n") + "\n"
    }

    fn link(&self, name: &str, uid: u32) -> Result<Link, BoxError> {
        let (netns, host_if, _) = link_names(&self.instance, name);
        let index = u64::from(uid.saturating_sub(super::UID_BASE));
        let (Some(gateway), Some(address)) =
            (self.config.subnet.nth(index * 2), self.config.subnet.nth(index * 2 + 1))
        else {
            return Err(BoxError::Unsupported(format!(
                "the egress subnet {} holds too few addresses for this box; use a /14",
                self.config.subnet
            )));
        };
        Ok(Link { netns, host_if, gateway, address })
    }

    /// Whether box `id`'s network namespace and its link are still in place (a pod's first box
    /// started again while its pod's other boxes are in them), the instance's policy put back
    /// if it was removed. A namespace without its link is not: [`Network::attach`] makes both
    /// anew.
    pub(crate) async fn attached(&self, id: &BoxId) -> Result<bool, BoxError> {
        let (netns, host_if, _) = link_names(&self.instance, id.as_str());
        if !(Path::new(NETNS_DIR).join(netns).exists() && Path::new("/sys/class/net").join(host_if).exists())
        {
            return Ok(false);
        }
        self.install().await?;
        Ok(true)
    }

    /// Makes the network namespace of `name` (a box's id or a warm slot's name), empty (its link
    /// comes with [`Network::connect`]); its path, for [`spawn_in`]. Made in this process (see
    /// [`add_namespace`]), so that a box's bubblewrap can be started in it while its link is
    /// still being made.
    pub(crate) async fn make_namespace(&self, name: &str) -> Result<PathBuf, BoxError> {
        // Leftovers of an earlier box of the same id (a crash mid-way) would make this fail.
        detach(&self.instance, name).await;
        add_namespace_now(link_names(&self.instance, name).0).await
    }

    /// Links box `id`'s namespace (made by [`Network::make_namespace`]) to the host, as host
    /// `uid`'s box: the link and the host's end first, then the box's end, its policy table and
    /// the shaping of both ends, which need nothing of each other, at once (each host tool run
    /// costs a process).
    pub(crate) async fn connect(&self, name: &str, uid: u32) -> Result<(), BoxError> {
        let link = self.link(name, uid)?;
        let attached = self.install().await?;
        let Link { netns, host_if, gateway, address } = &link;
        // The box's end is made in its namespace, as `eth0`: nothing is moved or renamed.
        let host = format!(
            "link add {host_if} type veth peer name eth0 netns {netns}\n\
             addr add {gateway}/31 dev {host_if}\nlink set {host_if} up\n"
        );
        run_with_input("ip", &["-batch", "-"], &host).await?;
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"), "1");
        let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{host_if}/rp_filter"), "1");
        let inside = format!(
            "addr add {address}/31 dev eth0\nlink set eth0 up\nlink set lo up\n\
             route add default via {gateway} dev eth0\n"
        );
        let path = Path::new(NETNS_DIR).join(netns);
        let policy = self.box_table(&attached);
        tokio::try_join!(
            run_in(Some(&path), "ip", &["-batch", "-"], &inside),
            inside_netns(&path, &policy),
            self.shape(None, host_if),
            self.shape(Some(&path), "eth0"),
        )?;
        Ok(())
    }

    /// Gives the network of warm slot `from` (its namespace and link, made by
    /// [`Network::make_namespace`] and [`Network::connect`]) to box `to`: the namespace is
    /// mounted under the box's name instead of the slot's, and the host's end of the link is
    /// renamed (down, renamed, up: the kernel renames no interface that is up). The box's end,
    /// its policy table and the shaping of both ends stay as they are.
    pub(crate) async fn rename(&self, from: &str, to: &BoxId) -> Result<(), BoxError> {
        let (old_ns, old_if, _) = link_names(&self.instance, from);
        let (new_ns, new_if, _) = link_names(&self.instance, to.as_str());
        let (old, new) = (Path::new(NETNS_DIR).join(old_ns), Path::new(NETNS_DIR).join(new_ns));
        tokio::task::spawn_blocking(move || move_namespace(&old, &new))
            .await
            .map_err(|e| BoxError::Start(format!("renaming a network namespace: {e}")))??;
        let batch = format!(
            "link set dev {old_if} down\nlink set dev {old_if} name {new_if}\nlink set dev {new_if} up\n"
        );
        run_with_input("ip", &["-batch", "-"], &batch).await
    }

    /// Shapes link end `dev` in namespace `netns` (the host's when `None`) to the bandwidth cap,
    /// when there is one.
    async fn shape(&self, netns: Option<&Path>, dev: &str) -> Result<(), BoxError> {
        if self.config.bandwidth_mbit == 0 {
            return Ok(());
        }
        let rate = format!("{}mbit", self.config.bandwidth_mbit);
        // A bucket of a few milliseconds at the rate, and never below a jumbo frame.
        let burst = (u64::from(self.config.bandwidth_mbit) * 125_000 / 200).max(16 * 1024).to_string();
        let args = [
            "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst, "latency", "100ms",
        ];
        run_in(netns, "tc", &args, "").await
    }

    /// The bubblewrap arguments of a box with egress: no network namespace of its own (it is
    /// started in the one [`Network::attach`] made) and the instance's resolvers.
    pub(crate) fn bwrap_args(&self, args: &mut Vec<String>) {
        args.retain(|a| a != "--unshare-net");
        args.extend([
            "--ro-bind".into(),
            self.resolv_conf.to_string_lossy().into_owned(),
            "/etc/resolv.conf".into(),
        ]);
    }

    /// Removes links and namespaces of this instance whose box is gone.
    /// Whether boxes with egress remain.
    async fn repair(&self, live: &dyn Fn(&BoxId) -> bool) -> bool {
        let prefix = netns_prefix(&self.instance);
        let names = entries(Path::new(NETNS_DIR));
        let mut kept = Vec::new();
        for name in names {
            let Some(id) = name.strip_prefix(&prefix).and_then(|id| BoxId::new(id).ok()) else { continue };
            if live(&id) {
                kept.push(link_names(&self.instance, id.as_str()).1);
            } else {
                tracing::info!(box_id = %id, "removing the network of a box that is gone");
                detach(&self.instance, id.as_str()).await;
            }
        }
        let if_prefix = if_prefix(&self.instance);
        for dev in interfaces() {
            if dev.starts_with(&if_prefix) && !kept.contains(&dev) {
                let _ = run("ip", &["link", "del", &dev]).await;
            }
        }
        !kept.is_empty()
    }
}

impl super::LocalBackend {
    /// Gives boxes whose spec asks for egress a network under `config`'s policy (see the module
    /// documentation); without it they are refused. Checks the host can hold the policy and
    /// removes what earlier runs left of boxes that are gone; the policy is put in place now
    /// when boxes with egress live, else by the first one.
    pub async fn enable_egress(&mut self, config: EgressConfig) -> Result<(), BoxError> {
        let live = |id: &BoxId| self.layer_dir(id).exists();
        let network = Network::start(config, &self.instance, &self.config.run_root, &live).await?;
        self.net = Some(std::sync::Arc::new(network));
        Ok(())
    }
}

/// Inside namespace `netns`: IPv6 off on `eth0`, ICMP echo sockets for the box's users, every
/// port open to them (the namespace belongs to the host's user namespace, so the box's root
/// lacks `CAP_NET_BIND_SERVICE` in it, and a web server on port 80 must still bind; the
/// namespace is the box's alone), and the box's own policy table (`nft -f`). The sysctls are written by a thread that entered
/// the namespace (`/proc/sys/net` shows the calling thread's), and `nft` is born in it: no
/// `ip netns exec`, which costs a mount namespace and a process per step.
async fn inside_netns(netns: &Path, policy: &str) -> Result<(), BoxError> {
    use tokio::io::AsyncWriteExt as _;
    let here = std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let there = std::fs::metadata(netns).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    if here.is_err() || there.is_err() || here.ok() == there.ok() {
        return Err(BoxError::Start(format!("{} is not a network namespace of its own", netns.display())));
    }
    let mut child = spawn_in(Some(netns), || {
        std::fs::write("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "1")?;
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")?;
        std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")?;
        tokio::process::Command::new("nft")
            .args(["-f", "-"])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    })
    .map_err(BoxError::io("setting up the box's namespace"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(policy.as_bytes()).await.map_err(BoxError::io("writing the box's policy"))?;
    }
    let out = child.wait_with_output().await.map_err(BoxError::io("running nft in the box's namespace"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BoxError::Start(format!(
            "nft in the box's namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Makes the network namespace `name` under [`NETNS_DIR`], as `ip netns add` does, without
/// starting a process: a thread of its own leaves this process's namespace for a new one, which a
/// bind mount of the thread's `/proc/thread-self/ns/net` keeps after the thread has ended.
fn add_namespace(name: &str) -> Result<PathBuf, BoxError> {
    share_namespace_dir()?;
    let path = Path::new(NETNS_DIR).join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(BoxError::io(format!("creating {}", path.display())))?;
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| -> std::io::Result<()> {
                // SAFETY: only the network namespace is unshared, on a thread that does nothing
                // else and ends here; no file descriptor table is unshared (`FILES`), so no
                // thread can lose sight of a descriptor.
                #[allow(unsafe_code)]
                unsafe {
                    rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET)?;
                }
                rustix::mount::mount_bind("/proc/thread-self/ns/net", &path)?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the thread making the namespace panicked")))
    });
    match made {
        Ok(()) => Ok(path),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(BoxError::Io { context: format!("making the network namespace {name}"), source: e })
        }
    }
}

/// Mounts the network namespace mounted at `old` at `new` instead.
fn move_namespace(old: &Path, new: &Path) -> Result<(), BoxError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(new)
        .map_err(BoxError::io(format!("creating {}", new.display())))?;
    if let Err(e) = rustix::mount::mount_bind(old, new) {
        let _ = std::fs::remove_file(new);
        return Err(BoxError::Io {
            context: format!("mounting {} at {}", old.display(), new.display()),
            source: e.into(),
        });
    }
    rustix::mount::unmount(old, rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| BoxError::Io { context: format!("unmounting {}", old.display()), source: e.into() })?;
    std::fs::remove_file(old).map_err(BoxError::io(format!("removing {}", old.display())))
}

/// The names (after the instance's prefix) of the network namespaces of `instance` whose name
/// starts with `prefix`.
pub(crate) fn namespaces_named(instance: &str, prefix: &str) -> Vec<String> {
    let ours = netns_prefix(instance);
    entries(Path::new(NETNS_DIR))
        .into_iter()
        .filter_map(|name| name.strip_prefix(&ours).map(str::to_owned))
        .filter(|name| name.starts_with(prefix))
        .collect()
}

/// [`add_namespace`] on a thread that may block.
async fn add_namespace_now(name: String) -> Result<PathBuf, BoxError> {
    tokio::task::spawn_blocking(move || add_namespace(&name))
        .await
        .map_err(|e| BoxError::Start(format!("making a network namespace: {e}")))?
}

/// Makes [`NETNS_DIR`] a shared mount (a bind mount of itself first if it is none), as
/// `ip netns add` does, so that a namespace mounted there shows in every mount namespace.
fn share_namespace_dir() -> Result<(), BoxError> {
    use rustix::mount::MountPropagationFlags as P;
    static SHARED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SHARED.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    std::fs::create_dir_all(NETNS_DIR).map_err(BoxError::io(format!("creating {NETNS_DIR}")))?;
    let shared = match rustix::mount::mount_change(NETNS_DIR, P::SHARED | P::REC) {
        Err(rustix::io::Errno::INVAL) => rustix::mount::mount_bind(NETNS_DIR, NETNS_DIR)
            .and_then(|()| rustix::mount::mount_change(NETNS_DIR, P::SHARED | P::REC)),
        other => other,
    };
    shared.map_err(|e| BoxError::Io {
        context: format!("sharing the mounts of {NETNS_DIR}"),
        source: e.into(),
    })?;
    SHARED.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Where box `id`'s network namespace is when the host made one for it (egress, or a pod's
/// first box): `/run/netns/vendbox-<instance>-<id>`.
pub(crate) fn namespace_of(instance: &str, id: &BoxId) -> PathBuf {
    Path::new(NETNS_DIR).join(link_names(instance, id.as_str()).0)
}

/// The network namespace of pod box `id` without egress, made now unless it exists (the pod's
/// first box started again keeps the namespace its pod's other boxes are in): the host's, with
/// only loopback, up, so that the pod's boxes reach each other on 127.0.0.1 and nothing else.
/// As with egress, the box's root has no `CAP_NET_ADMIN` in it, and ports below 1024 are opened
/// to it by sysctl (a web server on port 80).
pub(crate) async fn loopback_namespace(instance: &str, id: &BoxId) -> Result<PathBuf, BoxError> {
    let path = namespace_of(instance, id);
    if !path.exists() {
        add_namespace_now(link_names(instance, id.as_str()).0).await?;
        run_in(Some(&path), "ip", &["link", "set", "lo", "up"], "").await?;
    }
    let here = std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let there = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    if here.is_err() || there.is_err() || here.ok() == there.ok() {
        return Err(BoxError::Start(format!("{} is not a network namespace of its own", path.display())));
    }
    spawn_in(Some(&path), || {
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")?;
        std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")
    })
    .map_err(BoxError::io("setting up a pod's network namespace"))?;
    Ok(path)
}

/// Removes the link and network namespace of `name` (a box's id or a warm slot's name), if it
/// has them.
pub(crate) async fn detach(instance: &str, name: &str) {
    let (netns, host_if, peer_if) = link_names(instance, name);
    for dev in [&host_if, &peer_if] {
        if Path::new("/sys/class/net").join(dev).exists() {
            let _ = run("ip", &["link", "del", dev]).await;
        }
    }
    if Path::new(NETNS_DIR).join(&netns).exists()
        && let Err(e) = run("ip", &["netns", "del", &netns]).await
    {
        tracing::warn!(box_id = name, error = %e, "removing a box's network namespace");
    }
}

/// Removes the instance's policy table and files (its boxes' links are gone with them).
pub(crate) async fn remove_instance(instance: &str, run_root: &Path) {
    let name = table_name(instance);
    let _ =
        run_with_input("nft", &["-f", "-"], &format!("table inet {name}\ndelete table inet {name}\n")).await;
    let _ = std::fs::remove_dir_all(run_root.join(format!("net-{instance}")));
}

/// What of box `id`'s network remains on the host.
pub(crate) fn traces(instance: &str, id: &BoxId) -> Vec<String> {
    let (netns, host_if, peer_if) = link_names(instance, id.as_str());
    let mut traces = Vec::new();
    if Path::new(NETNS_DIR).join(&netns).exists() {
        traces.push(format!("the network namespace {netns}"));
    }
    for dev in [host_if, peer_if] {
        if Path::new("/sys/class/net").join(&dev).exists() {
            traces.push(format!("the interface {dev}"));
        }
    }
    traces
}

/// Runs `spawn` on a thread of its own that has entered network namespace `netns` (when one is
/// given), so that the process it starts is born there; the caller's threads never change
/// namespace. A process started by a thread inherits that thread's namespaces.
pub(crate) fn spawn_in<T: Send>(
    netns: Option<&Path>,
    spawn: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let Some(netns) = netns else { return spawn() };
    let file = std::fs::File::open(netns)?;
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
                spawn()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the spawning thread panicked")))
    })
}

/// The host's resolvers from `/etc/resolv.conf`, loopback ones left out (a box cannot reach the
/// host's loopback).
fn host_resolvers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// The IPv4 networks of the host's own interfaces (its LAN, its provider's network), box links
/// and loopback left out: boxes may not reach their neighbours.
fn attached_networks(box_prefix: &str) -> Vec<Prefix> {
    let Ok(out) = std::process::Command::new("ip").args(["-4", "-o", "addr", "show"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let dev = words.nth(1)?;
            let cidr = words.skip_while(|w| *w != "inet").nth(1)?;
            (dev != "lo" && !dev.starts_with(box_prefix)).then(|| cidr.parse().ok()).flatten()
        })
        .collect()
}

fn interfaces() -> Vec<String> {
    entries(Path::new("/sys/class/net"))
}

/// The names in directory `dir` (none when it cannot be read).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BoxError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(BoxError::io(format!("setting the mode of {}", path.display())))
}

async fn run(program: &str, args: &[&str]) -> Result<(), BoxError> {
    run_with_input(program, args, "").await
}

/// Runs a host networking tool and fails with its error output.
async fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), BoxError> {
    run_in(None, program, args, input).await
}

/// Runs a host networking tool born in network namespace `netns` (the host's when `None`; no
/// `ip -n`, which switches mount namespaces and remounts `/sys` in each run) and fails with its
/// error output.
async fn run_in(netns: Option<&Path>, program: &str, args: &[&str], input: &str) -> Result<(), BoxError> {
    use tokio::io::AsyncWriteExt as _;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child =
        spawn_in(netns, || command.spawn()).map_err(BoxError::io(format!("starting {program}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await.map_err(BoxError::io(format!("writing to {program}")))?;
    }
    let out = child.wait_with_output().await.map_err(BoxError::io(format!("running {program}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BoxError::Start(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_count() {
        let p: Prefix = "10.200.1.7/14".parse().unwrap();
        assert_eq!(p.to_string(), "10.200.0.0/14");
        assert_eq!(p.size(), 262_144);
        assert_eq!(p.nth(3), Some(Ipv4Addr::new(10, 200, 0, 3)));
        assert_eq!(p.nth(262_144), None);
        assert_eq!("203.0.113.5".parse::<Prefix>().unwrap().to_string(), "203.0.113.5/32");
        assert!("fc00::/7".parse::<Prefix>().is_err());
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
    }

    #[test]
    fn link_names_fit_interface_names() {
        let id = BoxId::new("a-very-long-box-id-0123456789abcdef0123456789abcdef").unwrap();
        let (_, host, peer) = link_names("0123456789ab", id.as_str());
        assert!(host.len() <= 15 && peer.len() <= 15, "{host} {peer}");
        assert!(host.starts_with(&if_prefix("0123456789ab")));
    }

    #[test]
    fn the_table_refuses_private_ranges_and_opens_the_allow_list() {
        let config = EgressConfig {
            allow: vec!["10.9.0.0/16".parse().unwrap()],
            deny: vec!["198.51.100.0/24".parse().unwrap()],
            ..EgressConfig::default()
        };
        let network = Network {
            config,
            instance: "abcdef012345".into(),
            resolvers: vec![Ipv4Addr::new(203, 0, 113, 53)],
            resolv_conf: PathBuf::from("/x"),
            installed: tokio::sync::Mutex::new(None),
        };
        let t = network.table(&["192.0.2.0/24".parse().unwrap()]);
        for range in REFUSED_RANGES.iter().chain(&["198.51.100.0/24", "192.0.2.0/24", "10.200.0.0/14"]) {
            assert!(t.contains(range), "{range} missing from\n{t}");
        }
        let allowed = t.find("@allowed jump admit").unwrap();
        assert!(allowed < t.find("@refused reject").unwrap(), "{t}");
        assert!(t.contains("ct count over 512"), "{t}");
        assert!(t.contains("iifname \"vabcde*\" jump from_box"), "{t}");
        let inside = network.box_table(&["192.0.2.0/24".parse().unwrap()]);
        for range in REFUSED_RANGES.iter().chain(&["198.51.100.0/24", "192.0.2.0/24", "10.200.0.0/14"]) {
            assert!(inside.contains(range), "{range} missing from\n{inside}");
        }
        assert!(inside.find("@allowed jump admit").unwrap() < inside.find("@refused reject").unwrap());
    }
}

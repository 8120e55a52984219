//! A cgroup per box with memory, pids and cpu limits, on cgroup v2, v1 and hybrid hosts.
//!
//! Each controller is placed where the host has it: in the unified (v2) hierarchy when the v2
//! root lists it in `cgroup.controllers`, else in its own v1 hierarchy. A hybrid host (v1
//! controllers next to an empty v2 tree) therefore gets three v1 directories per box. Boxes live
//! under `vendbox/<instance>/<box>` so that several vendbox instances on one host never touch each
//! other's boxes. Where the host has the cpuset controller, a box is also given as many CPUs as
//! it has vcpus (spread over the host's by the box's name), so that `nproc` in it says its own
//! count.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Limits;
use crate::error::BoxError;

/// The controllers a box is limited by.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Length of a CPU accounting period in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Where each controller lives on this host.
#[derive(Debug, Clone)]
pub(crate) struct Hierarchies {
    /// `(controller, mount point, is v2)` for memory, pids and cpu, and cpuset where the host
    /// has it.
    places: Vec<(&'static str, PathBuf, bool)>,
}

impl Hierarchies {
    /// Reads the host's cgroup mounts from `/proc/self/mountinfo`.
    pub(crate) fn detect() -> Result<Hierarchies, BoxError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(BoxError::io("reading /proc/self/mountinfo"))?;
        let mut v2_root = None;
        let mut v1 = Vec::new();
        for line in mountinfo.lines() {
            // `… mount_point options - fstype source super_options`
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let mount_point = left.split(' ').nth(4).unwrap_or_default();
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or_default();
            let super_options = right.nth(1).unwrap_or_default();
            match fstype {
                "cgroup2" if v2_root.is_none() => v2_root = Some(PathBuf::from(mount_point)),
                "cgroup" => v1.push((PathBuf::from(mount_point), super_options.to_owned())),
                _ => {}
            }
        }
        let v2_controllers = v2_root
            .as_ref()
            .and_then(|root| fs::read_to_string(root.join("cgroup.controllers")).ok())
            .unwrap_or_default();
        let mut places = Vec::new();
        for controller in CONTROLLERS {
            if let Some(root) =
                v2_root.as_ref().filter(|_| v2_controllers.split_whitespace().any(|c| c == controller))
            {
                places.push((controller, root.clone(), true));
            } else if let Some((mount, _)) =
                v1.iter().find(|(_, options)| options.split(',').any(|o| o == controller))
            {
                places.push((controller, mount.clone(), false));
            } else {
                return Err(BoxError::Unsupported(format!(
                    "no cgroup hierarchy offers the `{controller}` controller"
                )));
            }
        }
        if let Some(root) =
            v2_root.as_ref().filter(|_| v2_controllers.split_whitespace().any(|c| c == "cpuset"))
        {
            places.push(("cpuset", root.clone(), true));
        } else if let Some((mount, _)) =
            v1.iter().find(|(_, options)| options.split(',').any(|o| o == "cpuset"))
        {
            places.push(("cpuset", mount.clone(), false));
        }
        Ok(Hierarchies { places })
    }

    /// A short description for logs (`memory:v1 pids:v1 cpu:v1`).
    pub(crate) fn describe(&self) -> String {
        self.places
            .iter()
            .map(|(c, _, v2)| format!("{c}:{}", if *v2 { "v2" } else { "v1" }))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The distinct directories a box's cgroup occupies, with whether each is v2.
    fn dirs(&self, relative: &Path) -> Vec<(PathBuf, bool)> {
        let mut dirs: Vec<(PathBuf, bool)> = Vec::new();
        for (_, root, v2) in &self.places {
            let dir = root.join(relative);
            if !dirs.iter().any(|(d, _)| *d == dir) {
                dirs.push((dir, *v2));
            }
        }
        dirs
    }

    /// The box's pids controller: its limit (`pids.max`) and how often a fork was refused at
    /// it (the `max` count of `pids.events`), as cgroup v1 and v2 both keep them.
    pub(crate) fn pids_limit(&self, instance: &str, box_name: &str) -> Option<(u64, u64)> {
        let (_, root, _) = self.places.iter().find(|(c, _, _)| *c == "pids")?;
        let dir = root.join(Self::instance_path(instance)).join(box_name);
        let max = fs::read_to_string(dir.join("pids.max")).ok()?.trim().parse().ok()?;
        let events = fs::read_to_string(dir.join("pids.events")).ok()?;
        let hits = events.lines().find_map(|l| l.strip_prefix("max "))?.trim().parse().ok()?;
        Some((max, hits))
    }

    /// The parent of every box of `instance`.
    pub(crate) fn instance_path(instance: &str) -> PathBuf {
        Path::new("vendbox").join(instance)
    }

    /// Creates the box's cgroup with `limits`; returns the `cgroup.procs` files a process writes
    /// its pid into to join it.
    pub(crate) fn create(
        &self,
        instance: &str,
        box_name: &str,
        limits: Limits,
    ) -> Result<Vec<PathBuf>, BoxError> {
        let procs = self.make(instance, box_name)?;
        self.limit(instance, box_name, limits)?;
        Ok(procs)
    }

    /// Creates the directories of cgroup `box_name` (a box's, or a warm slot's), without limits;
    /// returns the `cgroup.procs` files a process writes its pid into to join it.
    pub(crate) fn make(&self, instance: &str, box_name: &str) -> Result<Vec<PathBuf>, BoxError> {
        let relative = Self::instance_path(instance).join(box_name);
        for (root, v2) in self.dirs(Path::new("")) {
            if v2 {
                enable_v2_controllers(&root, &relative, &self.v2_controllers())?;
            }
        }
        let mut procs = Vec::new();
        for (dir, _) in self.dirs(&relative) {
            fs::create_dir_all(&dir).map_err(BoxError::io(format!("creating cgroup {}", dir.display())))?;
            procs.push(dir.join("cgroup.procs"));
        }
        Ok(procs)
    }

    /// Whether a cgroup can be renamed here: cgroup v1 renames a directory within its parent;
    /// v2 renames none.
    pub(crate) fn renames(&self) -> bool {
        self.places.iter().all(|(_, _, v2)| !v2)
    }

    /// Renames cgroup `from` (a warm slot's) to `to` (its box's), in every hierarchy.
    pub(crate) fn rename(&self, instance: &str, from: &str, to: &str) -> Result<(), BoxError> {
        let parent = Self::instance_path(instance);
        for (dir, _) in self.dirs(&parent.join(from)) {
            let target = dir.with_file_name(to);
            fs::rename(&dir, &target).map_err(BoxError::io(format!(
                "renaming cgroup {} to {}",
                dir.display(),
                target.display()
            )))?;
        }
        Ok(())
    }

    /// Sets the limits of cgroup `box_name` (made by [`Hierarchies::make`]) to `limits`.
    pub(crate) fn limit(&self, instance: &str, box_name: &str, limits: Limits) -> Result<(), BoxError> {
        let relative = Self::instance_path(instance).join(box_name);
        let memory = u64::from(limits.memory_mb) * 1024 * 1024;
        let quota = u64::from(limits.vcpu.max(1)) * CPU_PERIOD_US;
        for (controller, root, v2) in &self.places {
            let dir = root.join(&relative);
            let writes: Vec<(&str, String)> = match (*controller, *v2) {
                ("memory", true) => vec![("memory.max", memory.to_string()), ("memory.swap.max", "0".into())],
                ("memory", false) => {
                    // v1 keeps memory's limit at or below memory and swap's: a limit raised
                    // (a warm slot's, given to a bigger box) raises that one first.
                    let now = fs::read_to_string(dir.join("memory.limit_in_bytes"))
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(u64::MAX);
                    let mut writes = vec![
                        ("memory.limit_in_bytes", memory.to_string()),
                        ("memory.memsw.limit_in_bytes", memory.to_string()),
                        ("memory.swappiness", "0".into()),
                    ];
                    if memory > now {
                        writes.swap(0, 1);
                    }
                    writes
                }
                ("pids", _) => vec![("pids.max", limits.pids.to_string())],
                ("cpuset", v2) => {
                    if !v2 {
                        // A v1 cpuset starts empty: each level takes its parent's CPUs and
                        // memory nodes before the box's own are narrowed.
                        inherit_v1_cpuset(root, &relative)?;
                    }
                    let parent = dir.parent().unwrap_or(root);
                    let cpus = fs::read_to_string(parent.join("cpuset.effective_cpus"))
                        .map_err(BoxError::io(format!("reading the CPUs of {}", parent.display())))?;
                    vec![("cpuset.cpus", pick_cpus(&parse_cpus(&cpus), limits.vcpu, box_name))]
                }
                ("cpu", true) => vec![("cpu.max", format!("{quota} {CPU_PERIOD_US}"))],
                ("cpu", false) => {
                    vec![
                        ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                        ("cpu.cfs_quota_us", quota.to_string()),
                    ]
                }
                _ => vec![],
            };
            for (file, value) in writes {
                let path = dir.join(file);
                match fs::write(&path, &value) {
                    Ok(()) => {}
                    // Swap accounting is off on many hosts; without swap files the limit is the same.
                    Err(e) if e.kind() == ErrorKind::NotFound && file.contains("sw") => {}
                    Err(e) => {
                        return Err(BoxError::Io {
                            context: format!("writing {value} to {}", path.display()),
                            source: e,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn v2_controllers(&self) -> Vec<&'static str> {
        self.places.iter().filter(|(_, _, v2)| *v2).map(|(c, _, _)| *c).collect()
    }

    /// The pids in the box's cgroup (from the pids controller's directory).
    pub(crate) fn pids(&self, instance: &str, box_name: &str) -> Vec<i32> {
        let relative = Self::instance_path(instance).join(box_name);
        let mut pids = Vec::new();
        for (dir, _) in self.dirs(&relative) {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills every process of the box and removes its cgroup directories. Idempotent.
    pub(crate) async fn destroy(&self, instance: &str, box_name: &str) -> Result<(), BoxError> {
        let relative = Self::instance_path(instance).join(box_name);
        for (dir, v2) in self.dirs(&relative) {
            if v2 && dir.exists() {
                let _ = fs::write(dir.join("cgroup.kill"), "1");
            }
        }
        // Kill until the cgroup is empty: a process may fork between our read and our kill, but
        // the pids limit bounds how often, and each round kills all that were there.
        for round in 0..200 {
            let pids = self.pids(instance, box_name);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            tokio::time::sleep(Duration::from_millis(if round < 10 { 2 } else { 20 })).await;
        }
        for (dir, _) in self.dirs(&relative) {
            remove_cgroup_dir(&dir).await?;
        }
        Ok(())
    }

    /// Names of the box cgroups of `instance`, in any hierarchy: a vendbox killed while it made
    /// or renamed a cgroup in one hierarchy after another leaves it in some of them only.
    pub(crate) fn list(&self, instance: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .dirs(&Self::instance_path(instance))
            .into_iter()
            .filter_map(|(dir, _)| fs::read_dir(dir).ok())
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

impl Hierarchies {
    /// Removes the (empty) parent cgroup of `instance`'s boxes.
    pub(crate) async fn remove_instance(&self, instance: &str) -> Result<(), BoxError> {
        for (dir, _) in self.dirs(&Self::instance_path(instance)) {
            remove_cgroup_dir(&dir).await?;
        }
        Ok(())
    }
}

/// Gives each level of `relative` under the v1 cpuset hierarchy `root` its parent's CPUs and
/// memory nodes where it has none yet.
fn inherit_v1_cpuset(root: &Path, relative: &Path) -> Result<(), BoxError> {
    let mut parent = root.to_path_buf();
    for component in relative.components() {
        let dir = parent.join(component);
        fs::create_dir_all(&dir).map_err(BoxError::io(format!("creating cgroup {}", dir.display())))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if fs::read_to_string(dir.join(file)).is_ok_and(|v| v.trim().is_empty()) {
                let value = fs::read_to_string(parent.join(file))
                    .map_err(BoxError::io(format!("reading {}", parent.join(file).display())))?;
                fs::write(dir.join(file), value.trim())
                    .map_err(BoxError::io(format!("writing {}", dir.join(file).display())))?;
            }
        }
        parent = dir;
    }
    Ok(())
}

/// The CPUs of a cpuset list (`0-3,6`).
fn parse_cpus(list: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((low, high)) => {
                if let (Ok(low), Ok(high)) = (low.parse::<u32>(), high.parse::<u32>()) {
                    cpus.extend(low..=high);
                }
            }
            None => cpus.extend(part.parse::<u32>().ok()),
        }
    }
    cpus
}

/// `vcpu` of `cpus` for box `box_name` (all of them when it has as many or more), starting at a
/// place its name picks, so that boxes spread over the host; as a cpuset list.
fn pick_cpus(cpus: &[u32], vcpu: u32, box_name: &str) -> String {
    let wanted = usize::try_from(vcpu.max(1)).unwrap_or(usize::MAX);
    let chosen: Vec<u32> = if cpus.is_empty() || wanted >= cpus.len() {
        cpus.to_vec()
    } else {
        let start = box_name.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)))
            % cpus.len();
        (0..wanted).map(|i| cpus[(start + i) % cpus.len()]).collect()
    };
    chosen.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Turns on `controllers` in each v2 ancestor of `relative` so the box's cgroup can use them.
fn enable_v2_controllers(root: &Path, relative: &Path, controllers: &[&str]) -> Result<(), BoxError> {
    if controllers.is_empty() {
        return Ok(());
    }
    let line = controllers.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ");
    let mut dir = root.to_path_buf();
    let ancestors: Vec<_> = relative.components().collect();
    for component in &ancestors[..ancestors.len().saturating_sub(1)] {
        fs::write(dir.join("cgroup.subtree_control"), &line)
            .map_err(BoxError::io(format!("enabling {line} in {}", dir.display())))?;
        dir.push(component);
        fs::create_dir_all(&dir).map_err(BoxError::io(format!("creating cgroup {}", dir.display())))?;
    }
    fs::write(dir.join("cgroup.subtree_control"), &line)
        .map_err(BoxError::io(format!("enabling {line} in {}", dir.display())))
}

/// Removes an empty cgroup directory, waiting briefly for the kernel to let go of exited tasks.
async fn remove_cgroup_dir(dir: &Path) -> Result<(), BoxError> {
    for _ in 0..100 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    fs::remove_dir(dir).map_err(BoxError::io(format!("removing cgroup {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_boxes_spread_over_them() {
        assert_eq!(parse_cpus("0-3,6\n"), [0, 1, 2, 3, 6]);
        assert_eq!(parse_cpus("5"), [5]);
        assert!(parse_cpus("").is_empty());
        let cpus = parse_cpus("0-3");
        assert_eq!(pick_cpus(&cpus, 8, "a"), "0,1,2,3");
        assert_eq!(pick_cpus(&cpus, 2, "a").split(',').count(), 2);
        let firsts: std::collections::HashSet<String> =
            (0..40).map(|n| pick_cpus(&cpus, 1, &format!("box-{n}"))).collect();
        assert!(firsts.len() > 1, "every box got the same CPU");
    }
}

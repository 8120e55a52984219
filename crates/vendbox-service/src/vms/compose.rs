//! The docker-compose subset a VM runs: per service `image`, `command`, `entrypoint`,
//! `environment`, `ports`, named `volumes`, `depends_on` and `restart`. Parsed with
//! `serde_norway` (a maintained fork of `serde_yaml`); keys outside the subset are refused by
//! name rather than ignored, so a workload never runs other than as written.
//!
//! What runs is a shell script per service ([`Service::script`]): the services' names for
//! 127.0.0.1 in `/etc/hosts` (they share one network), its environment, its working directory,
//! and the command under a loop that keeps the restart policy, started in the background of the
//! service's box.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Largest compose file taken, in bytes.
pub const MAX_COMPOSE_BYTES: usize = 64 * 1024;

/// Most services one VM runs.
pub const MAX_SERVICES: usize = 16;

/// The port a VM's domain serves when no service publishes one.
pub const DEFAULT_PORT: u16 = 80;

/// A string or a list of strings, as compose writes `command` and `entrypoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Words {
    /// One line (run by `/bin/sh -c`).
    Line(String),
    /// Words, run as they are.
    List(Vec<String>),
}

/// `environment` as a map or as `KEY=VALUE` items.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Environment {
    Map(BTreeMap<String, Option<Scalar>>),
    List(Vec<String>),
}

/// A YAML scalar in an environment map (`PORT: 80`, `DEBUG: true`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Bool(bool),
}

/// A published port: `"8080:80"`, `80`, `"127.0.0.1:8080:80/tcp"` or the long form.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Port {
    Number(u16),
    Text(String),
    Long { target: u16 },
}

/// `depends_on` as a list or as a map of conditions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum DependsOn {
    List(Vec<String>),
    Map(BTreeMap<String, serde_json::Value>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    image: Option<String>,
    command: Option<Words>,
    entrypoint: Option<Words>,
    environment: Option<Environment>,
    #[serde(default)]
    ports: Vec<Port>,
    #[serde(default)]
    volumes: Vec<String>,
    depends_on: Option<DependsOn>,
    restart: Option<String>,
    working_dir: Option<String>,
    container_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawCompose {
    #[serde(default)]
    services: BTreeMap<String, RawService>,
    #[serde(default)]
    volumes: Option<BTreeMap<String, Option<serde_json::Value>>>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    version: Option<serde_json::Value>,
}

/// How a service is restarted when its process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Never (`no`, the default).
    No,
    /// Always (`always`, `unless-stopped`).
    Always,
    /// When it exits with a non-zero status (`on-failure`).
    OnFailure,
}

/// One service as it will run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its name in the compose file.
    pub name: String,
    /// The image reference.
    pub image: String,
    /// `command`, if given.
    pub command: Option<Words>,
    /// `entrypoint`, if given.
    pub entrypoint: Option<Words>,
    /// Its environment, in order.
    pub environment: BTreeMap<String, String>,
    /// The container ports it publishes, in order.
    pub ports: Vec<u16>,
    /// Named volumes: (volume, path inside).
    pub volumes: Vec<(String, String)>,
    /// Services started before it.
    pub depends_on: Vec<String>,
    /// Its restart policy.
    pub restart: Restart,
    /// `working_dir`, if given.
    pub working_dir: Option<String>,
}

/// A compose project: its services in start order (each after those it depends on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compose {
    /// In start order.
    pub services: Vec<Service>,
}

impl Compose {
    /// Parses `text`, refusing what a VM cannot run with a sentence naming it.
    pub fn parse(text: &[u8]) -> Result<Compose, String> {
        if text.len() > MAX_COMPOSE_BYTES {
            return Err(format!("the compose file is {} bytes; at most {MAX_COMPOSE_BYTES}", text.len()));
        }
        let raw: RawCompose =
            serde_norway::from_slice(text).map_err(|e| format!("the compose file is not valid: {e}"))?;
        let _ = (raw.name, raw.version);
        let declared: BTreeSet<String> = raw.volumes.unwrap_or_default().into_keys().collect();
        if raw.services.is_empty() {
            return Err("the compose file has no services".into());
        }
        if raw.services.len() > MAX_SERVICES {
            return Err(format!("a VM runs at most {MAX_SERVICES} services"));
        }
        let mut services = BTreeMap::new();
        for (name, raw) in raw.services {
            services.insert(name.clone(), service(&name, raw, &declared)?);
        }
        for service in services.values() {
            if let Some(missing) = service.depends_on.iter().find(|d| !services.contains_key(*d)) {
                return Err(format!(
                    "service `{}` depends on `{missing}`, which the file does not define",
                    service.name
                ));
            }
        }
        // Start order: each service after those it depends on (a cycle is refused).
        let mut order: Vec<Service> = Vec::new();
        let mut started = BTreeSet::new();
        while order.len() < services.len() {
            let ready: Vec<&Service> = services
                .values()
                .filter(|s| !started.contains(&s.name) && s.depends_on.iter().all(|d| started.contains(d)))
                .collect();
            if ready.is_empty() {
                return Err("`depends_on` makes a cycle".into());
            }
            for s in ready {
                started.insert(s.name.clone());
                order.push(s.clone());
            }
        }
        Ok(Compose { services: order })
    }

    /// The port the VM's domain serves: the first service's (in start order) first published
    /// port, else [`DEFAULT_PORT`].
    pub fn port(&self) -> u16 {
        self.services.iter().find_map(|s| s.ports.first().copied()).unwrap_or(DEFAULT_PORT)
    }
}

fn service(name: &str, raw: RawService, declared: &BTreeSet<String>) -> Result<Service, String> {
    let at = |what: &str| format!("service `{name}`: {what}");
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !valid_name {
        return Err(format!("service name `{name}` must be 1-63 letters, digits, `-`, `_` or `.`"));
    }
    let image = raw
        .image
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| at("`image` is required (`build` is not supported)"))?;
    let _ = raw.container_name;
    let mut environment = BTreeMap::new();
    match raw.environment {
        Some(Environment::Map(map)) => {
            for (k, v) in map {
                let v = match v {
                    Some(Scalar::Text(t)) => t,
                    Some(Scalar::Int(i)) => i.to_string(),
                    Some(Scalar::Bool(b)) => b.to_string(),
                    None => String::new(),
                };
                environment.insert(k, v);
            }
        }
        Some(Environment::List(items)) => {
            for item in items {
                let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
                environment.insert(k.to_owned(), v.to_owned());
            }
        }
        None => {}
    }
    if let Some(bad) = environment.keys().find(|k| !env_name(k)) {
        return Err(at(&format!("`{bad}` is not an environment variable name")));
    }
    let mut ports = Vec::new();
    for port in raw.ports {
        let target = match port {
            Port::Number(p) => p,
            Port::Long { target } => target,
            Port::Text(text) => {
                let text = text.split('/').next().unwrap_or_default();
                let target = text.rsplit(':').next().unwrap_or_default();
                target
                    .parse()
                    .map_err(|_| at(&format!("port `{text}` is not `HOST:CONTAINER` or a port number")))?
            }
        };
        if target == 0 {
            return Err(at("port 0 cannot be published"));
        }
        ports.push(target);
    }
    let mut volumes = Vec::new();
    for volume in raw.volumes {
        let mut halves = volume.split(':');
        let (source, target) = (halves.next().unwrap_or_default(), halves.next());
        let Some(target) = target.filter(|t| t.starts_with('/')) else {
            return Err(at(&format!("volume `{volume}`: give `NAME:/path` (a named volume)")));
        };
        if source.starts_with('/') || source.starts_with('.') || source.starts_with('~') {
            return Err(at(&format!(
                "volume `{volume}` binds a host path; a VM has named volumes only, kept on its own disk"
            )));
        }
        if !declared.contains(source) {
            return Err(at(&format!("volume `{source}` is not declared under the top-level `volumes`")));
        }
        if target.contains('\'') || target.contains("..") {
            return Err(at(&format!("volume path `{target}` is not a plain absolute path")));
        }
        volumes.push((source.to_owned(), target.to_owned()));
    }
    let depends_on = match raw.depends_on {
        Some(DependsOn::List(list)) => list,
        Some(DependsOn::Map(map)) => map.into_keys().collect(),
        None => Vec::new(),
    };
    let restart = match raw.restart.as_deref().map(str::trim) {
        None | Some("no" | "\"no\"") => Restart::No,
        Some("always" | "unless-stopped") => Restart::Always,
        Some(p) if p == "on-failure" || p.starts_with("on-failure:") => Restart::OnFailure,
        Some(other) => {
            return Err(at(&format!("restart `{other}` is not no, always, unless-stopped or on-failure")));
        }
    };
    Ok(Service {
        name: name.to_owned(),
        image: image.trim().to_owned(),
        command: raw.command,
        entrypoint: raw.entrypoint,
        environment,
        ports,
        volumes,
        depends_on,
        restart,
        working_dir: raw.working_dir,
    })
}

/// Whether `name` can name an environment variable.
pub fn env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses `KEY=VALUE` lines (a `.env` file: blank lines and `#` comments skipped, `export `
/// and matching quotes around the value dropped).
pub fn dotenv(text: &str, field: &str) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line.split_once('=').ok_or_else(|| format!("`{field}` takes KEY=VALUE lines"))?;
        let key = key.trim();
        if !env_name(key) {
            return Err(format!("`{field}`: `{key}` is not an environment variable name"));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        vars.insert(key.to_owned(), value.to_owned());
    }
    Ok(vars)
}

/// `text` quoted for a POSIX shell.
pub fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// What an image says to run when the compose file does not (its OCI config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
}

impl Service {
    /// The words to run: compose's `entrypoint` (else the image's) followed by compose's
    /// `command` (else, when the entrypoint is the image's, the image's `Cmd`). A one-line
    /// `command` or `entrypoint` is run by `/bin/sh -c`.
    pub fn argv(&self, image: &ImageDefaults) -> Result<Vec<String>, String> {
        let words = |w: &Words| match w {
            Words::Line(line) => vec!["/bin/sh".to_owned(), "-c".to_owned(), line.clone()],
            Words::List(list) => list.clone(),
        };
        let entrypoint = self.entrypoint.as_ref().map_or_else(|| image.entrypoint.clone(), words);
        let command = match (&self.command, &self.entrypoint) {
            (Some(c), _) => words(c),
            (None, None) => image.cmd.clone(),
            (None, Some(_)) => Vec::new(),
        };
        let argv: Vec<String> = entrypoint.into_iter().chain(command).collect();
        if argv.is_empty() {
            return Err(format!(
                "service `{}`: image `{}` names no command; give `command` in the compose file",
                self.name, self.image
            ));
        }
        Ok(argv)
    }

    /// The shell script that starts this service in the background of its box: the names of
    /// the VM's services (`names`, checked by [`Compose::parse`]) for 127.0.0.1 in `/etc/hosts`,
    /// its volumes' directories made, its environment (the image's, the compose file's, then
    /// `extra`), its working directory, and its command in a loop that keeps the restart policy;
    /// output to `/var/log/vendbox-vm/<service>.log`.
    pub fn script(
        &self,
        image: &ImageDefaults,
        extra: &BTreeMap<String, String>,
        names: &[String],
    ) -> Result<String, String> {
        let argv = self.argv(image)?;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for item in &image.env {
            let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
            if env_name(k) {
                env.insert(k.to_owned(), v.to_owned());
            }
        }
        env.extend(self.environment.clone());
        env.extend(extra.clone());
        let mut inner = String::new();
        for (k, v) in &env {
            let _ = writeln!(inner, "export {k}={}", sh_quote(v));
        }
        if let Some(dir) = self.working_dir.as_ref().or(image.working_dir.as_ref()).filter(|d| !d.is_empty())
        {
            let _ = writeln!(inner, "cd {} || exit 1", sh_quote(dir));
        }
        let command: Vec<String> = argv.iter().map(|w| sh_quote(w)).collect();
        let command = command.join(" ");
        let looped = match self.restart {
            Restart::No => format!("{command}\n"),
            Restart::Always => format!("while :; do {command}; sleep 1; done\n"),
            Restart::OnFailure => format!("until {command}; do sleep 1; done\n"),
        };
        inner.push_str(&looped);
        let log = format!("/var/log/vendbox-vm/{}.log", self.name);
        let mut script = String::new();
        if !names.is_empty() {
            let line = format!("127.0.0.1 {}\n", names.join(" "));
            let _ = writeln!(script, "printf '%s' {} >>/etc/hosts 2>/dev/null", sh_quote(&line));
        }
        script.push_str("mkdir -p /var/log/vendbox-vm");
        for (_, path) in &self.volumes {
            let _ = write!(script, " {}", sh_quote(path));
        }
        let _ = write!(script, "\n/bin/sh -c {} </dev/null >{} 2>&1 &\n", sh_quote(&inner), sh_quote(&log));
        Ok(script)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_compose_parses_and_serves_port_80() {
        let compose = Compose::parse(b"services:\n  app:\n    image: nginx:alpine\n").unwrap();
        assert_eq!(compose.services.len(), 1);
        assert_eq!(compose.services[0].image, "nginx:alpine");
        assert_eq!(compose.port(), 80);
    }

    #[test]
    fn services_start_after_what_they_depend_on() {
        let text = br#"
services:
  web:
    image: web:1
    depends_on: [db]
    ports: ["8080:8000"]
    restart: unless-stopped
    environment:
      PORT: 8000
      DEBUG: true
    volumes: ["data:/srv/data"]
  db:
    image: web:1
    command: ["sleep", "infinity"]
    environment: ["A=1", "B"]
volumes:
  data: {}
"#;
        let compose = Compose::parse(text).unwrap();
        let names: Vec<&str> = compose.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
        assert_eq!(compose.port(), 8000);
        let web = &compose.services[1];
        assert_eq!(web.restart, Restart::Always);
        assert_eq!(web.environment["PORT"], "8000");
        assert_eq!(web.environment["DEBUG"], "true");
        assert_eq!(web.volumes, [("data".to_owned(), "/srv/data".to_owned())]);
        assert_eq!(compose.services[0].environment["B"], "");
    }

    #[test]
    fn what_a_vm_cannot_run_is_refused_by_name() {
        for (text, says) in [
            ("services:\n  a:\n    build: .\n", "build"),
            ("services:\n  a:\n    image: x\n    volumes: [\"./src:/src\"]\n", "host path"),
            ("services:\n  a:\n    image: x\n    volumes: [\"data:/d\"]\n", "not declared"),
            ("services:\n  a:\n    image: x\n    depends_on: [b]\n", "does not define"),
            (
                "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n",
                "cycle",
            ),
            ("services: {}\n", "no services"),
            ("services:\n  a:\n    image: x\n    restart: sometimes\n", "restart"),
        ] {
            let error = Compose::parse(text.as_bytes()).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn the_script_runs_the_image_command_with_the_environment_under_the_restart_loop() {
        let compose = Compose::parse(
            b"services:\n  app:\n    image: web\n    restart: always\n    environment:\n      GREETING: \"it's\"\n",
        )
        .unwrap();
        let image = ImageDefaults {
            entrypoint: vec![],
            cmd: vec!["/bin/busybox".into(), "httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: Some("/www".into()),
        };
        let extra: BTreeMap<String, String> = [("SECRET".to_owned(), "s".to_owned())].into_iter().collect();
        let script = compose.services[0].script(&image, &extra, &["app".to_owned()]).unwrap();
        assert!(script.starts_with("printf '%s' '127.0.0.1 app\n' >>/etc/hosts"), "{script}");
        assert!(script.contains("GREETING='\\''it'\\''\\'\\'''\\''s'\\''"), "{script}");
        assert!(script.contains("while :; do '\\''/bin/busybox'\\'' '\\''httpd'\\''"), "{script}");
        assert!(script.contains("export SECRET="), "{script}");
        assert!(script.ends_with("2>&1 &\n"), "{script}");
        let no_cmd = Compose::parse(b"services:\n  app:\n    image: web\n").unwrap();
        assert!(no_cmd.services[0].argv(&ImageDefaults::default()).unwrap_err().contains("no command"));
    }

    #[test]
    fn dotenv_lines_become_variables() {
        let vars = dotenv("# c\nA=1\nexport B=\"two words\"\n\nC='x'\n", "secrets_plaintext").unwrap();
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "x");
        assert!(dotenv("1A=x", "environment").is_err());
    }
}

//! Images for VMs: a compose `image` is looked up in vendbox's image store under a name made
//! from the reference ([`store_name`]); one the store lacks is pulled from the registry the
//! operator configures (`[secretvm] registry`), and only from it.
//!
//! The pull is `skopeo copy docker://REGISTRY/REPO:TAG oci:LAYOUT:TAG` (OCI distribution), then
//! the image store's own import of OCI layouts (`umoci`, as `vendbox image import` does). skopeo
//! rather than a Rust client (`oci-client`) because the image store already needs skopeo and
//! umoci for imports, and a Rust client would only fetch the blobs that umoci must then unpack
//! from a layout anyway: one path in, the same for an operator's import and a VM's pull. The
//! image's `Entrypoint`, `Cmd`, `Env` and `WorkingDir` are read from the layout's config and
//! kept beside the store (`<data_dir>/secretvm/images/<name>.json`), since a root file system
//! alone does not say what to run.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};
use vendbox_box::image::{ImageStore, valid_name};

use super::compose::ImageDefaults;

/// Where images come from.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// `host[:port]` of the operator's registry; `None`: only images already in the store.
    pub host: Option<String>,
    /// Whether it is spoken to over plain HTTP or with an unverified certificate (a registry on
    /// loopback, for tests and single-host setups).
    pub insecure: bool,
}

/// A compose image reference, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry named in the reference, if any (`registry.example.com:5000`).
    pub registry: Option<String>,
    /// The repository (`library/nginx`).
    pub repository: String,
    /// The tag (`latest` when none is given) or digest (`sha256:…`).
    pub tag: String,
}

impl Reference {
    /// Parses `image` as docker does: a first component with a `.` or `:` (or `localhost`) is a
    /// registry; a repository of one component is under `library/`.
    pub fn parse(image: &str) -> Result<Reference, String> {
        let bad = || format!("image `{image}` is not a valid image reference");
        if image.is_empty()
            || image.len() > 255
            || image.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad());
        }
        let (name, tag) = if let Some((name, digest)) = image.split_once('@') {
            (name, digest.to_owned())
        } else {
            match image.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => (name, tag.to_owned()),
                _ => (image, "latest".to_owned()),
            }
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (Some(first.to_owned()), rest.to_owned())
            }
            _ => (None, name.to_owned()),
        };
        let repository = if repository.contains('/') { repository } else { format!("library/{repository}") };
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        };
        if !ok(&repository)
            || tag.is_empty()
            || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
        {
            return Err(bad());
        }
        Ok(Reference { registry, repository, tag })
    }
}

/// The name image `image` has in vendbox's image store: the reference with `/`, `:` and `@`
/// made `-`, lowercase (`nginx:alpine` is `nginx-alpine`); a hash of it when that is no valid
/// name.
pub fn store_name(image: &str) -> String {
    let plain: String = image
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if valid_name(&plain) {
        return plain;
    }
    format!("oci-{}", &hex::encode(Sha256::digest(image.as_bytes()))[..32])
}

impl Registry {
    /// Makes sure image `image` is in `store` (pulling it when missing) and returns its store
    /// name and what it says to run. Blocking: run it off the async threads.
    pub fn ensure(
        &self,
        store: &ImageStore,
        defaults_dir: &Path,
        image: &str,
    ) -> Result<(String, ImageDefaults), String> {
        let name = store_name(image);
        let defaults_file = defaults_dir.join(format!("{name}.json"));
        if store.rootfs(&name).is_some() {
            let defaults = std::fs::read(&defaults_file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            return Ok((name, defaults));
        }
        let reference = Reference::parse(image)?;
        let Some(host) = &self.host else {
            return Err(format!(
                "image `{image}` is not in this vendbox's image store (as `{name}`) and no registry is configured to pull it from"
            ));
        };
        if reference.registry.as_ref().is_some_and(|r| r != host) {
            return Err(format!(
                "image `{image}` names a registry other than this vendbox's ({host}); images are pulled from it only"
            ));
        }
        let skopeo = which("skopeo")
            .ok_or_else(|| format!("image `{image}` cannot be pulled: `skopeo` is not installed"))?;
        let work = tempdir(defaults_dir)?;
        let layout = work.join("oci");
        let source = if reference.tag.starts_with("sha256:") {
            format!("docker://{host}/{}@{}", reference.repository, reference.tag)
        } else {
            format!("docker://{host}/{}:{}", reference.repository, reference.tag)
        };
        let mut copy = Command::new(skopeo);
        copy.arg("copy").arg("--quiet");
        if self.insecure {
            copy.arg("--src-tls-verify=false");
        }
        copy.arg(&source).arg(format!("oci:{}:pulled", layout.display()));
        let pulled = copy.output().map_err(|e| format!("image `{image}` cannot be pulled: {e}"));
        let result = pulled.and_then(|out| {
            if !out.status.success() {
                return Err(format!(
                    "image `{image}` cannot be had from {host}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let defaults = layout_defaults(&layout)?;
            store
                .import(&name, &layout, &mut |_| {})
                .map_err(|e| format!("image `{image}` was pulled but cannot be imported: {e}"))?;
            let json = serde_json::to_vec(&defaults).map_err(|e| e.to_string())?;
            std::fs::write(&defaults_file, json)
                .map_err(|e| format!("keeping the config of `{image}`: {e}"))?;
            Ok((name, defaults))
        });
        let _ = std::fs::remove_dir_all(&work);
        result
    }
}

/// The `Entrypoint`, `Cmd`, `Env` and `WorkingDir` of the one image in the OCI layout `layout`.
fn layout_defaults(layout: &Path) -> Result<ImageDefaults, String> {
    let read = |digest: &str| -> Result<serde_json::Value, String> {
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| format!("digest `{digest}` is not sha256"))?;
        let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let manifest = index["manifests"][0]["digest"].as_str().ok_or("the pulled layout has no manifest")?;
    let manifest = read(manifest)?;
    let config = manifest["config"]["digest"].as_str().ok_or("the pulled manifest has no config")?;
    let config = read(config)?;
    let words = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|w| w.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let c = &config["config"];
    Ok(ImageDefaults {
        entrypoint: words(&c["Entrypoint"]),
        cmd: words(&c["Cmd"]),
        env: words(&c["Env"]),
        working_dir: c["WorkingDir"].as_str().filter(|d| !d.is_empty()).map(str::to_owned),
    })
}

fn tempdir(under: &Path) -> Result<PathBuf, String> {
    let dir = under.join(format!("pull-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
    Ok(dir)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_as_docker_splits_them() {
        let r = Reference::parse("nginx:alpine").unwrap();
        assert_eq!((r.registry, r.repository.as_str(), r.tag.as_str()), (None, "library/nginx", "alpine"));
        let r = Reference::parse("127.0.0.1:5000/team/web").unwrap();
        assert_eq!(
            (r.registry.as_deref(), r.repository.as_str(), r.tag.as_str()),
            (Some("127.0.0.1:5000"), "team/web", "latest")
        );
        assert!(Reference::parse("Bad Name").is_err());
        assert_eq!(store_name("nginx:alpine"), "nginx-alpine");
        assert_eq!(store_name("127.0.0.1:5000/team/web:1"), "127.0.0.1-5000-team-web-1");
        assert!(store_name("-x").starts_with("oci-"));
    }
}

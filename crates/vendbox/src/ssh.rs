//! `vendbox ssh LEASE`: opens a box over the SSH gateway. It asks vendbox for the lease's
//! `ssh_command` (with the lease's token), then runs OpenSSH's `ssh` with the given key and
//! any command, as the agent would by pasting the command.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::{Context, bail};

#[derive(Debug, clap::Args)]
pub(crate) struct SshArgs {
    /// The lease (box) id.
    lease: String,
    /// A command to run instead of an interactive shell.
    command: Vec<String>,
    /// The vendbox that sold it.
    #[arg(long, env = "VENDBOX_URL", default_value = "http://127.0.0.1:8402")]
    url: String,
    /// The lease's token (to read its `ssh_command`).
    #[arg(long, env = "VENDBOX_LEASE_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: String,
    /// The private key whose public half was given at purchase (else ssh's defaults).
    #[arg(long, short = 'i', value_name = "FILE")]
    identity: Option<PathBuf>,
    /// An option for ssh, as with `ssh -o` (repeatable).
    #[arg(short = 'o', value_name = "OPTION")]
    options: Vec<String>,
}

pub(crate) async fn run(args: SshArgs) -> anyhow::Result<()> {
    let url = format!("{}/v1/boxes/{}", args.url.trim_end_matches('/'), args.lease);
    let response =
        reqwest::Client::new().get(&url).bearer_auth(&args.token).send().await.context("asking vendbox")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.context("reading vendbox's answer")?;
    if !status.is_success() {
        bail!(
            "vendbox answered {status}: {}",
            body["error"]["message"].as_str().unwrap_or("no reason given")
        );
    }
    let Some(line) = body["ssh_command"].as_str() else {
        bail!("this vendbox runs no SSH gateway (its [ssh] section is off, or it runs no boxes)");
    };
    let mut words = line.split_whitespace();
    let program = words.next().unwrap_or("ssh");
    let mut command = std::process::Command::new(program);
    if let Some(key) = &args.identity {
        command.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
    }
    for option in &args.options {
        command.arg("-o").arg(option);
    }
    command.args(words).args(&args.command);
    Err(command.exec()).context("starting ssh")
}

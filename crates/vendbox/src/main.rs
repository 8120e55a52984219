//! The `vendbox` binary: `serve` runs the storefront; `dev` runs it on a local chain with test
//! USDC and a funded agent wallet; `fetch` is an x402-paying HTTP client; `ssh` opens a bought box;
//! `image` builds and lists the images boxes are made from; `mcp` serves the MCP tools over
//! stdio; `version` says which build this is. Inside every box the same program runs as
//! `vendbox boxd`, the box's PID 1.

mod dev;
mod fetch;
mod image;
mod mcp;
mod ssh;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use vendbox_server::{Config, Secrets, Server, shutdown_signal};

/// vendbox sells disposable compute to AI agents: sandboxes to run commands in, machines to SSH
/// into, and TTL locks with fencing tokens, paid per request over HTTP 402 in USDC.
#[derive(Debug, Parser)]
#[command(name = "vendbox", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VENDBOX_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the storefront: the HTTP API, its workers and its store.
    ///
    /// With no configuration file vendbox starts on safe embedded defaults: it listens on
    /// 127.0.0.1:8402, keeps its state in SQLite under ./vendbox-data and sells the default
    /// catalog. Every key of vendbox.toml can also be set with VENDBOX_<SECTION>__<KEY>
    /// (for example VENDBOX_SERVER__LISTEN=0.0.0.0:8402).
    Serve(ServeArgs),
    /// Run vendbox on a local chain: start anvil (or use --rpc-url), deploy a test USDC, fund
    /// a fresh agent wallet, and serve with the built-in facilitator. Prints what an agent needs.
    Dev(dev::DevArgs),
    /// Fetch a URL, paying its HTTP 402 with x402 or MPP from VENDBOX_WALLET_KEY, up to --max-price.
    Fetch(fetch::FetchArgs),
    /// Open a box you bought over SSH: `vendbox ssh LEASE [COMMAND…]` (needs the lease's token
    /// in VENDBOX_LEASE_TOKEN or --token, and the key given at purchase).
    Ssh(ssh::SshArgs),
    /// Build, import, list and remove the images boxes are made from (`debian-12`…).
    Image(image::ImageArgs),
    /// Serve vendbox's MCP tools over stdio (for an agent's MCP client): buy boxes and locks,
    /// run commands, move files, paid from VENDBOX_API_KEY's credits or VENDBOX_WALLET_KEY.
    Mcp(mcp::McpArgs),
    /// Print the version.
    Version,
    /// Run as PID 1 of a box (started by vendbox inside each box; not for people).
    #[command(hide = true)]
    Boxd(BoxdArgs),
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct BoxdArgs {
    /// The Unix socket to serve the host on.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Serve on the listening socket given as standard input (how the host starts a box).
    #[arg(long)]
    listen_stdin: bool,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration file [default: ./vendbox.toml when it exists].
    #[arg(long, short, env = "VENDBOX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding `server.listen`.
    #[arg(long, env = "VENDBOX_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Directory for local state, overriding `store.data_dir`.
    #[arg(long, env = "VENDBOX_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// postgres://… to share state between hosts, overriding `store.database_url`.
    #[arg(long, env = "VENDBOX_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Version => {
            println!("vendbox {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve(args) => run_async(serve(args)),
        Command::Dev(args) => run_async(dev::run(args)),
        Command::Fetch(args) => run_async(fetch::run(args)),
        Command::Ssh(args) => run_async(ssh::run(args)),
        Command::Image(args) => image::run(args),
        Command::Mcp(args) => run_async(mcp::run(args)),
        Command::Boxd(args) => {
            let listen = match args.socket {
                Some(path) => boxd::Listen::Path(path),
                None => boxd::Listen::Stdin,
            };
            boxd::run(boxd::RunOptions { listen })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vendbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(future: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VENDBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The configuration file named, or `./vendbox.toml` when it exists.
fn config_file(named: Option<PathBuf>) -> Option<PathBuf> {
    named.or_else(|| {
        let default = PathBuf::from("vendbox.toml");
        default.exists().then_some(default)
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = config_file(args.config.clone());
    let mut config = Config::load(file.as_deref(), std::env::vars())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.store.data_dir = dir;
    }
    if let Some(url) = args.database_url {
        config.store.database_url = Some(url);
    }
    let secrets = Secrets::from_env().map_err(anyhow::Error::msg)?;
    let where_from = file.as_deref().map_or_else(|| "embedded defaults".into(), |p| p.display().to_string());
    let server = start(&config, secrets, &where_from).await?;
    server.run(shutdown_signal()).await.context("serving")?;
    tracing::info!("vendbox stopped");
    Ok(())
}

/// Opens the store and binds the server; prints the `vendbox listening on` line.
async fn start(config: &Config, secrets: Secrets, where_from: &str) -> anyhow::Result<Server> {
    let store = vendbox_store::open(config.store.database_url.as_deref(), &config.store.data_dir)
        .await
        .context("opening the store")?;
    let server = Server::bind(config, store.clone(), secrets)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    let addr = server.local_addr()?;
    tracing::info!(
        %addr,
        store = store.backend(),
        offers = config.offers.len(),
        config = %where_from,
        "vendbox {} serving",
        env!("CARGO_PKG_VERSION"),
    );
    // Machine-readable lines for scripts and tests that start vendbox on port 0: the gateway's
    // first, so that a reader has every address once it reads the `listening` line.
    if let Some(ssh) = server.ssh_addr() {
        println!("vendbox ssh gateway on {ssh}");
    }
    println!("vendbox listening on http://{addr}");
    Ok(server)
}

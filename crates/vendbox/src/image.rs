//! `vendbox image`: the operator's commands for the images boxes are made from (`build`,
//! `import`, `list`, `rm`), over `vendbox_box::image::ImageStore` in the data directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use vendbox_box::image::{ImageInfo, ImageStore, Progress, RECIPES, Recipe};

/// Arguments of `vendbox image`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImageArgs {
    /// Directory for local state, as `vendbox serve --data-dir` [default: `store.data_dir` of
    /// the configuration, ./vendbox-data].
    #[arg(long, env = "VENDBOX_DATA_DIR", value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Configuration file [default: ./vendbox.toml when it exists].
    #[arg(long, short, env = "VENDBOX_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ImageCommand {
    /// Build an image from Debian's packages with mmdebstrap (needs root and the Debian mirror;
    /// takes a few minutes). Known images: debian-12.
    Build {
        /// The image to build.
        name: String,
        /// Debian mirror to build from [default: mmdebstrap's].
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
    },
    /// Import an OCI image layout (a directory or a tar archive) or a `docker save` archive.
    Import {
        /// The layout or archive.
        file: PathBuf,
        /// The name offers will give it.
        #[arg(long)]
        name: String,
    },
    /// List the images of the data directory.
    #[command(alias = "ls")]
    List {
        /// One JSON object per image instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image no box stands on.
    #[command(alias = "remove")]
    Rm {
        /// The image to remove.
        name: String,
    },
}

/// Runs `vendbox image …`.
pub(crate) fn run(args: ImageArgs) -> anyhow::Result<()> {
    let data_dir = if let Some(dir) = args.data_dir {
        dir
    } else {
        let file = crate::config_file(args.config);
        vendbox_server::Config::load(file.as_deref(), std::env::vars())?.store.data_dir
    };
    let store = ImageStore::of_data_dir(&data_dir);
    match args.command {
        ImageCommand::Build { name, mirror } => {
            let Some(recipe) = Recipe::named(&name) else {
                let known: Vec<&str> = RECIPES.iter().map(|r| r.name).collect();
                bail!(
                    "vendbox builds no image `{name}` (it builds {}); `vendbox image import` takes any OCI image",
                    known.join(", ")
                );
            };
            let started = Instant::now();
            let shown = Shown::new(&format!("building {name}"));
            let info = store.build(recipe, mirror.as_deref(), &mut |p| shown.progress(p));
            shown.done();
            let info = info.with_context(|| format!("building image `{name}`"))?;
            report(&info, started.elapsed());
        }
        ImageCommand::Import { file, name } => {
            let started = Instant::now();
            let shown = Shown::new(&format!("importing {}", file.display()));
            let info = store.import(&name, &file, &mut |p| shown.progress(p));
            shown.done();
            let info = info.with_context(|| format!("importing {} as `{name}`", file.display()))?;
            report(&info, started.elapsed());
        }
        ImageCommand::List { json } => {
            let images = store.list();
            if json {
                for image in &images {
                    println!("{}", serde_json::to_string(image)?);
                }
            } else {
                println!("{:<20} {:>10}  {:<20}  SOURCE", "NAME", "SIZE", "CREATED");
                println!(
                    "{:<20} {:>10}  {:<20}  the host's /usr, read-only (always there)",
                    "host", "-", "-"
                );
                for image in &images {
                    println!(
                        "{:<20} {:>10}  {:<20}  {}",
                        image.name,
                        mebibytes(image.bytes),
                        created(image.created_at),
                        image.source
                    );
                }
            }
        }
        ImageCommand::Rm { name } => {
            store.remove(&name, || vendbox_box::local::boxes_on_image(&data_dir, &name))?;
            println!("removed image {name}");
        }
    }
    Ok(())
}

/// A spinner with the elapsed time and the tool's last line; steps stay on the terminal.
struct Shown {
    bar: ProgressBar,
}

impl Shown {
    fn new(what: &str) -> Shown {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix}: {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Shown { bar }
    }

    fn progress(&self, progress: Progress) {
        match progress {
            Progress::Step(step) => {
                self.bar.println(format!("· {step}"));
                self.bar.set_message(step);
            }
            Progress::Output(line) => {
                // mmdebstrap's own steps (`I: downloading packages with apt...`) stay visible.
                if let Some(step) = line.strip_prefix("I: ") {
                    self.bar.println(format!("  {step}"));
                }
                if !line.trim().is_empty() {
                    self.bar.set_message(line);
                }
            }
        }
    }

    fn done(self) {
        self.bar.finish_and_clear();
    }
}

fn report(info: &ImageInfo, took: Duration) {
    println!("image {} ready: {} in {:.0?} ({})", info.name, mebibytes(info.bytes), took, info.source);
    println!("offers name it with images = [\"{}\"]", info.name);
}

fn mebibytes(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1024 * 1024))
}

fn created(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(|| unix.to_string(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

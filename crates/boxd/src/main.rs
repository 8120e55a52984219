//! The `boxd` binary: `boxd --socket PATH`, or `boxd --listen-stdin` with a listening socket as
//! standard input.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: boxd --socket PATH | boxd --listen-stdin";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut listen = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--socket") => listen = args.next().map(|p| boxd::Listen::Path(PathBuf::from(p))),
            Some(s) if s.starts_with("--socket=") => {
                listen = Some(boxd::Listen::Path(PathBuf::from(&s["--socket=".len()..])));
            }
            Some("--listen-stdin") => listen = Some(boxd::Listen::Stdin),
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("boxd: unexpected argument `{}`\n{USAGE}", arg.display());
                return ExitCode::from(2);
            }
        }
    }
    let Some(listen) = listen else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match boxd::run(boxd::RunOptions { listen }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boxd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

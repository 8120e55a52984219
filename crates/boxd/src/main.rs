//! The `boxd` binary: `boxd --socket PATH`.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: boxd --socket PATH";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut socket = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--socket") => socket = args.next().map(PathBuf::from),
            Some(s) if s.starts_with("--socket=") => socket = Some(PathBuf::from(&s["--socket=".len()..])),
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
    let Some(socket) = socket else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match boxd::run(boxd::RunOptions { socket }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boxd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

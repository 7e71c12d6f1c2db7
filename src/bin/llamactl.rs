//! The client binary: argument parsing and error printing only; the work is in `llamactl::cli`.

use clap::Parser;
use llamactl::cli::{self, generate, ClientArgs};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = ClientArgs::parse();
    if let Some(kind) = args.generate {
        return match generate::write::<ClientArgs>(kind, &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("llamactl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llamactl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // The whole chain: "cannot reach llamactld at …: connection refused".
            eprintln!("llamactl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

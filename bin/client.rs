//! `client <client_id> [REQUEST...]`: the minilb client.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use minilb::client::{self, ClientConfig};

/// The minilb client: sends a request to the load balancer and shows the reply or saves the
/// file. With no request it prompts `Enter query: ` until end of input or `quit`.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  client 1 'SELECT * FROM COLORS LIMIT 3;'   (quote it: the shell would expand * and ;)\n  client 1 file colors.csv\n  client 1            (interactive)\nExit code: 0 on OK, 1 on ERR, 2 when the balancer cannot be reached."
)]
struct Args {
    /// This client's id, shown in its messages.
    client_id: u32,
    /// The request: `file <name>` downloads a file; anything else is an SQL query.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    request: Vec<String>,
    /// Load balancer address (or a server's, to skip the balancer).
    #[arg(long, default_value = "127.0.0.1:5070")]
    lb: String,
    /// Folder downloads are saved in.
    #[arg(long, default_value = ".")]
    download_dir: PathBuf,
    /// Overwrite an existing file instead of saving as `name (1).ext`.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = ClientConfig {
        id: args.client_id,
        lb: args.lb,
        download_dir: args.download_dir,
        force: args.force,
    };
    if !config.download_dir.is_dir() {
        eprintln!(
            "client: download folder {} does not exist; create it or pass --download-dir",
            config.download_dir.display()
        );
        return ExitCode::from(2);
    }
    let code = if args.request.is_empty() {
        client::interactive(&config, &mut io::stdin().lock(), &mut io::stdout())
    } else {
        client::run_once(&config, &args.request.join(" "))
    };
    ExitCode::from(code)
}

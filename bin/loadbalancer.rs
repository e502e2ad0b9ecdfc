//! `loadbalancer`: the minilb load balancer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use minilb::balancer::{self, BalancerConfig};
use minilb::cidr::{self, AllowList};
use minilb::cli::parse_seconds;

/// The minilb load balancer: gives each client request to an idle server, most powerful
/// first (round robin among equals), and streams the reply back.
#[derive(Parser)]
#[command(
    version,
    after_help = "Servers record themselves in the servers file; the balancer picks them up within a second.\nLogs go to stderr; RUST_LOG=debug shows more, RUST_LOG=warn less."
)]
struct Args {
    /// Address to listen on for clients.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on for clients (0 picks a free one).
    #[arg(long, default_value_t = 5070)]
    port: u16,
    /// The servers file to read and watch.
    #[arg(long, default_value = "data/servers.json")]
    servers_file: PathBuf,
    /// Balancing policy: power (fastest idle first, by declared time), measured, round-robin,
    /// least-connections or two-choices.
    #[arg(long, default_value = "power", value_parser = clap::builder::PossibleValuesParser::new(minilb::policy::names()))]
    algorithm: String,
    /// Seconds a request waits for a busy server before `ERR busy`.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    queue_timeout: Duration,
    /// Seconds a server may take to start replying, on top of its processing time.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    server_timeout: Duration,
    /// Extra attempts on other servers when a server fails before replying.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Most clients connected at once; more get `ERR busy`.
    #[arg(long, default_value_t = 10_000)]
    max_clients: usize,
    /// Seconds Ctrl-C waits for connected clients to get their replies and leave.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    grace: Duration,
    /// Address of the admin listener (HTTP: servers join here).
    #[arg(long, default_value = "127.0.0.1")]
    admin_host: String,
    /// Port of the admin listener (0 picks a free one).
    #[arg(long, default_value_t = 5080)]
    admin_port: u16,
    /// File holding the shared secret servers must present to join over the network;
    /// without it only loopback peers may join.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Seconds a request line may take to arrive, from its first byte (0: no limit).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    request_timeout: Duration,
    /// Seconds a client may stay silent between requests before it is disconnected (0: no limit).
    #[arg(long, default_value = "300", value_parser = parse_seconds)]
    idle_timeout: Duration,
    /// Serve only clients from this network, e.g. 10.0.0.0/8 or fd00::/8 (repeatable;
    /// default: every address). Others get `ERR forbidden`.
    #[arg(long, value_name = "CIDR", value_parser = cidr::parse_network)]
    allow: Vec<ipnet::IpNet>,
    /// Most servers in the pool, from the servers file and joins together: further joins get
    /// HTTP 503 and further file entries are ignored, with a warning.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_servers: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    minilb::init_logging();
    minilb::cli::exit("loadbalancer", run(args))
}

fn run(args: Args) -> Result<(), String> {
    let token = args
        .token_file
        .as_deref()
        .map(minilb::token::read)
        .transpose()?;
    let config = BalancerConfig {
        host: args.host,
        port: args.port,
        servers_file: args.servers_file,
        algorithm: args.algorithm,
        queue_timeout: args.queue_timeout,
        server_timeout: args.server_timeout,
        retries: args.retries,
        max_clients: args.max_clients,
        grace: args.grace,
        admin_host: args.admin_host,
        admin_port: args.admin_port,
        token,
        request_timeout: args.request_timeout,
        idle_timeout: args.idle_timeout,
        allow: AllowList::new(args.allow),
        max_servers: args.max_servers as usize,
    };
    balancer::run(config, minilb::ctrl_c_channel()?)
}

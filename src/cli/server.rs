//! `fdopen-server`: serve, check a policy, explain a decision, or run the
//! echo demo (SPEC §7).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use serde_json::json;

use super::{CreateFlags, SEE_ALSO, exit, mode_parser};
use crate::audit::AuditLog;
use crate::decision::{Explanation, explain};
use crate::logging::{self, Level};
use crate::peer::PeerIdentity;
use crate::policy::{Policy, PolicyErrors};
use crate::protocol::{Create, FileRequest, Mode, PathMode, json_path, normalize_path};
use crate::server::upgrade::{self, Binary, Inherited};
use crate::server::{Server, ServerConfig, handover};
use crate::{lint, socket_path, systemd};

/// Policy-gated file-open broker: opens the files a policy grants and hands
/// the descriptors to clients over a Unix socket.
///
/// Exit codes: 0 success; 1 `check` found errors; 2 usage or configuration
/// error (bad policy, socket in use, ...).
#[derive(Debug, Parser)]
#[command(after_help = SEE_ALSO)]
#[command(name = "fdopen-server", version, max_term_width = 100)]
pub struct Cli {
    /// How much operational logging goes to stderr (audit records are apart).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "info",
        value_name = "LEVEL"
    )]
    pub log_level: Level,
    #[command(subcommand)]
    pub command: ServerCommand,
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Serve requests on a Unix socket until SIGTERM or SIGINT; SIGHUP
    /// reloads the policy and reopens the audit log; SIGUSR2 upgrades in
    /// place.
    ///
    /// Upgrades and restarts keep held and parked descriptors.
    /// SIGUSR2 answers what was read, stops reading, and runs the binary
    /// this server was started from (the path recorded at start, which
    /// with its directories must belong to root or the server's user and
    /// be writable by no one else) with the same arguments, handing it the
    /// listening socket, never closed, so no client is refused, and every
    /// held and parked descriptor with its name, kind, storer and expiry.
    /// Once the new process (a new pid, told to a service manager as
    /// MAINPID=) is ready, this one exits 0; if it is missing,
    /// not executable, or exits or hangs before it is ready, this one serves
    /// on with everything it had, and logs why. To upgrade: install the new
    /// binary over the old path, then kill -USR2 the server (under systemd:
    /// systemctl kill --kill-whom=main -s USR2 fdopen).
    ///
    /// Under systemd (NOTIFY_SOCKET set), SIGTERM puts every held and parked
    /// descriptor, behind one socket named fdopen-held, into the unit's fd
    /// store, and the next start takes them back from LISTEN_FDS: they
    /// survive systemctl restart, and stop + start with
    /// FileDescriptorStorePreserve=yes. Without systemd SIGTERM drops them;
    /// a crash, SIGKILL or reboot always does. Client connections are closed
    /// across either; clients reconnect.
    Serve(ServeArgs),
    /// Validate a policy: exit 0, or 1 with every error located. Also warns
    /// about rules that can never match or that a deny rule cancels.
    Check {
        /// Policy file, or directory of *.json files.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_POLICY)]
        policy: PathBuf,
        /// Treat warnings as errors (exit 1).
        #[arg(long)]
        strict: bool,
    },
    /// Show, rule by rule, whether a request would match and why not,
    /// then the decision the server would make.
    Explain(ExplainArgs),
    /// Run the line-echo demo server: print every line of every client's stdin.
    Echo {
        #[arg(long, env = "FDOPEN_SOCKET", value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Print a shell completion script for fdopen-server.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages of fdopen-server (DIR/man8) and fdopen-client
    /// (DIR/man1).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// Where `make install` and the package put the policy.
pub const DEFAULT_POLICY: &str = "/etc/fdopen/policy.d";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Socket to listen on [default: /run/fdopen/fdopen.sock as root, else
    /// $XDG_RUNTIME_DIR/fdopen.sock]; not needed under socket activation.
    #[arg(long, env = "FDOPEN_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Policy file, or directory of *.json files.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,
    /// Permissions of the socket file, in octal.
    #[arg(long, default_value = "0660", value_parser = parse_octal_mode, value_name = "MODE")]
    pub socket_mode: u32,
    /// Group owning the socket file (name or gid).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Append audit records to FILE instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Record stat, readlink, xattr and readdir requests (a program under
    /// `run` may make thousands); opens, changes, binds and held
    /// descriptors are always recorded.
    #[arg(long, default_value = "on", value_parser = ["on", "off"], value_name = "on|off")]
    pub audit_metadata: String,
    /// Longest request line in bytes, newline included.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u64).range(64..=16 << 20), value_name = "BYTES")]
    pub max_request: u64,
    /// Disconnect clients idle (or stuck mid-request) this long, e.g. 60s, 5m.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DUR")]
    pub idle_timeout: Duration,
    /// Most clients connected at once; more are answered busy.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_clients: usize,
    /// How long an idle worker polls for new requests before it sleeps:
    /// lower latency for a little CPU; 0 never polls.
    #[arg(long, default_value = "50us", value_parser = parse_duration, value_name = "DUR")]
    pub busy_poll: Duration,
    /// Niceness of the worker threads (-20 to 19). A worker serves many
    /// clients, so by default it weighs in the CPU scheduler about as much
    /// as three threads of one: answers go out in longer runs, with fewer
    /// preemptions by the clients they wake. 0 weighs it like any thread.
    #[arg(long, default_value_t = -5, value_parser = clap::value_parser!(i32).range(-20..=19), value_name = "N", allow_negative_numbers = true)]
    pub worker_nice: i32,
    /// A request whose filesystem calls have not finished after this long
    /// is answered io_error; other clients are served meanwhile.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub fs_timeout: Duration,
    /// Load a policy that users other than root and the server's own could
    /// change, with a warning instead of refusing it. For tests and
    /// development only.
    #[arg(long)]
    pub insecure_policy_permissions: bool,
    /// Members of GROUP (name or gid) may ask for stats, besides root and
    /// the server's own user.
    #[arg(long, value_name = "GROUP")]
    pub stats_group: Option<String>,
    /// Most descriptors held or parked at once, in all; more are busy.
    #[arg(long, default_value_t = 65536, value_name = "N")]
    pub max_held: usize,
    /// Most descriptors one uid may hold or park at once.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_held_per_uid: usize,
    /// Worker threads [default: number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256), value_name = "N")]
    pub workers: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Policy file, or directory of *.json files.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_POLICY)]
    pub policy: PathBuf,
    /// Absolute path the client would ask for.
    #[arg(
        long,
        value_name = "P",
        required_unless_present_any = ["bind", "name"],
        conflicts_with_all = ["bind", "name"]
    )]
    pub path: Option<PathBuf>,
    /// A bind the client would ask for, e.g. tcp:*:443.
    #[arg(long, value_name = "ADDR", conflicts_with = "name")]
    pub bind: Option<String>,
    /// A held name the client would act on (with --op), e.g. web/c17.
    #[arg(long, value_name = "N", requires = "op")]
    pub name: Option<String>,
    /// With --name: store, retrieve, list, drop, park or wake. With
    /// --path: a tree operation's mode, stat, list, mkdir or delete.
    #[arg(long, value_name = "OP", conflicts_with = "bind")]
    pub op: Option<String>,
    /// With --name: whose held fd (a uid) [default: the client's own].
    #[arg(long, value_name = "UID", requires = "name")]
    pub storer: Option<u32>,
    /// With --bind: the request sets SO_REUSEPORT.
    #[arg(long, requires = "bind")]
    pub reuseport: bool,
    #[arg(long, default_value = "read", value_parser = mode_parser())]
    pub mode: Mode,
    #[command(flatten)]
    pub creating: CreateFlags,
    /// Client user by name: its uid, primary gid and supplementary groups
    /// as the system has them.
    #[arg(long, value_name = "NAME", conflicts_with = "uid")]
    pub user: Option<String>,
    /// Client uid; its gid and groups come from the system unless --gid
    /// gives them [default: yours].
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,
    /// Client gid; the first is the primary group, more are supplementary.
    #[arg(long, value_name = "N")]
    pub gid: Vec<u32>,
    /// Client cgroup v2 path, e.g. /system.slice/nginx.service [default:
    /// unknown, as for a kernel without SO_PEERPIDFD].
    #[arg(long, value_name = "PATH", conflicts_with = "unit")]
    pub cgroup: Option<String>,
    /// Client systemd unit: the cgroup /system.slice/UNIT.
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,
    /// Print the explanation as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_octal_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 0660"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs the server CLI; returns the exit code.
pub fn main() -> i32 {
    logging::set_program("fdopen-server");
    let cli = Cli::parse();
    logging::set_level(cli.log_level);
    match cli.command {
        ServerCommand::Serve(args) => serve(args),
        ServerCommand::Check { policy, strict } => check(&policy, strict),
        ServerCommand::Explain(args) => explain_command(args),
        ServerCommand::Echo { socket } => echo(socket),
        ServerCommand::Completions { shell } => {
            super::completions::print::<Cli>(shell, "fdopen-server");
            exit::OK
        }
        ServerCommand::Man { dir } => match super::man::write(&dir) {
            Ok(()) => exit::OK,
            Err(e) => {
                logging::error(format_args!(
                    "cannot write man pages to {}: {e}",
                    dir.display()
                ));
                exit::USAGE
            }
        },
    }
}

fn log(message: impl std::fmt::Display) {
    logging::info(format_args!("{message}"));
}

/// For `check` and `explain`: one `error:` line per problem.
fn print_policy_errors(errors: &PolicyErrors) {
    for e in &errors.0 {
        logging::error(format_args!("{e}"));
    }
}

/// For the daemon, at start and on reload: through the operational log.
fn log_policy_errors(errors: &PolicyErrors) {
    for e in &errors.0 {
        logging::error(format_args!("{e}"));
    }
}

fn check(path: &Path, strict: bool) -> i32 {
    let policy = match Policy::load_trusted(path, nix::unistd::geteuid().as_raw(), false) {
        Ok((policy, _)) => policy,
        Err(errors) => {
            print_policy_errors(&errors);
            return exit::REFUSED;
        }
    };
    let mut warnings: Vec<String> = lint::policy_warnings(&policy);
    warnings.extend(lint::lint(&policy, true).iter().map(ToString::to_string));
    for w in &warnings {
        logging::warn(format_args!("{w}"));
    }
    let own = lint::self_grants(&policy);
    for e in &own {
        logging::error(format_args!("{e}"));
    }
    if !own.is_empty() {
        return exit::REFUSED;
    }
    if strict && !warnings.is_empty() {
        logging::error(format_args!(
            "{}: {} warnings, fatal with --strict",
            path.display(),
            warnings.len()
        ));
        return exit::REFUSED;
    }
    println!(
        "{}: ok, {} rules, {} warnings",
        path.display(),
        policy.rules.len(),
        warnings.len()
    );
    exit::OK
}

fn serve(args: ServeArgs) -> i32 {
    match try_serve(args) {
        Ok(()) => exit::OK,
        Err(message) => {
            logging::error(format_args!("{message}"));
            exit::USAGE
        }
    }
}

fn try_serve(args: ServeArgs) -> Result<(), String> {
    // Taken first: the environment is edited before other threads exist.
    let inherited = Inherited::take()?;
    let passed = match inherited {
        Some(_) => systemd::Passed::default(),
        None => systemd::take(handover::FDNAME),
    };
    // Recorded at start: what SIGUSR2 runs again (SPEC §3.4).
    let binary = Binary::current();
    // Signals are taken synchronously by this thread; workers and the
    // hand-over inherit the mask. Blocked first, so a SIGUSR2 arriving
    // early waits for us instead of killing a server just upgraded.
    let signals = SigSet::from_iter([
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR2,
    ]);
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let (policy, exposures) = Policy::load_trusted(
        &args.policy,
        nix::unistd::geteuid().as_raw(),
        args.insecure_policy_permissions,
    )
    .map_err(|errors| {
        log_policy_errors(&errors);
        format!("cannot load policy {}", args.policy.display())
    })?;
    for exposure in exposures {
        logging::warn(format_args!(
            "{exposure} (allowed by --insecure-policy-permissions)"
        ));
    }
    for warning in lint::policy_warnings(&policy) {
        logging::warn(format_args!("{warning}"));
    }
    for warning in lint::self_grants(&policy) {
        logging::warn(format_args!("{warning}"));
    }
    let group = args
        .socket_group
        .as_deref()
        .map(resolve_group)
        .transpose()?;
    let stats_group = args.stats_group.as_deref().map(resolve_group).transpose()?;
    let audit = match &args.audit_log {
        Some(path) => AuditLog::open(path, group.map(|g| g.as_raw()))
            .map_err(|e| format!("cannot open audit log {}: {e}", path.display()))?,
        None => AuditLog::stderr(),
    };
    raise_fd_limit();
    let (handover, inherited_listener) = match inherited {
        Some(i) => (Some(i.handover), Some((i.listener, i.owns_socket))),
        None => (None, None),
    };
    let (listener, owned_path) = match (inherited_listener, passed.listener) {
        (Some((listener, owns_socket)), _) => {
            let path = owns_socket
                .then(|| socket_path::resolve(args.socket.clone()))
                .transpose()
                .map_err(|e| e.to_string())?;
            (listener, path)
        }
        (None, Some(listener)) => (listener, None),
        (None, None) => {
            let path = socket_path::resolve(args.socket).map_err(|e| e.to_string())?;
            let listener =
                socket_path::bind(&path, args.socket_mode, group).map_err(|e| e.to_string())?;
            (listener, Some(path))
        }
    };
    let mut config = ServerConfig {
        max_request: args.max_request as usize,
        idle_timeout: args.idle_timeout,
        max_clients: args.max_clients,
        busy_poll: args.busy_poll,
        worker_nice: args.worker_nice,
        fs_timeout: args.fs_timeout,
        insecure_policy_permissions: args.insecure_policy_permissions,
        stats_group: stats_group.map(|g| g.as_raw()),
        audit_metadata: args.audit_metadata == "on",
        held: crate::server::HeldLimits {
            total: args.max_held,
            per_uid: args.max_held_per_uid,
        },
        ..ServerConfig::default()
    };
    if let Some(workers) = args.workers {
        config.workers = workers as usize;
    }
    let handed = take_back(handover.as_ref(), &passed.named)?;
    let rules = policy.rules.len();
    let workers = config.workers;
    let (server, refused) =
        Server::start_holding(listener, policy, args.policy.clone(), audit, config, handed)
            .map_err(|e| format!("cannot start: {e}"))?;
    for unheld in refused {
        logging::error(format_args!(
            "{:?} of uid {} was handed over but cannot be held again: {}",
            unheld.name, unheld.storer, unheld.why.message
        ));
    }
    let place = owned_path
        .as_ref()
        .map_or("the socket systemd passed".to_owned(), |p| {
            p.display().to_string()
        });
    log(format_args!(
        "listening on {place} ({rules} rules, {workers} workers)"
    ));
    if !crate::peer::pidfd_supported() {
        logging::warn(format_args!(
            "this kernel has no SO_PEERPIDFD (Linux 6.5+): clients' cgroups are unknown, so rules with cgroups or units never grant"
        ));
    }
    match handover {
        // The predecessor tells the service manager, with our pid.
        Some(handover) => handover
            .ready()
            .map_err(|e| format!("cannot tell the previous server we are ready: {e}"))?,
        None => {
            let _ = systemd::notify("READY=1");
        }
    }
    if !passed.named.is_empty() {
        // Read back and serving: the store's copy is spent.
        let _ = systemd::notify(&format!("FDSTOREREMOVE=1\nFDNAME={}", handover::FDNAME));
    }
    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => {
                let _ = systemd::notify(&systemd::reloading_message());
                match server.reload() {
                    Ok(rules) => log(format_args!(
                        "reloaded policy {} ({rules} rules)",
                        args.policy.display()
                    )),
                    Err(errors) => {
                        log_policy_errors(&errors);
                        logging::error(format_args!(
                            "policy reload failed; the previous policy stays in force"
                        ));
                    }
                }
                if let Err(e) = server.reopen_audit_log() {
                    logging::error(format_args!("cannot reopen audit log: {e}"));
                }
                let _ = systemd::notify("READY=1");
            }
            Ok(Signal::SIGUSR2) => {
                let binary = match &binary {
                    Ok(binary) => binary,
                    Err(e) => {
                        serving_on(&format_args!(
                            "upgrade refused: cannot tell which binary this is ({e})"
                        ));
                        continue;
                    }
                };
                let (held, parked) = server.held_counts();
                log(format_args!(
                    "SIGUSR2: upgrading in place to {} ({held} held, {parked} parked)",
                    binary.path.display()
                ));
                match server.upgrade(binary, owned_path.is_some()) {
                    Ok(successor) => {
                        log(format_args!(
                            "upgraded: pid {} serves now with {} descriptors; this process stops",
                            successor.pid, successor.handed
                        ));
                        let _ = systemd::notify(&format!("MAINPID={}\nREADY=1", successor.pid));
                        server.shutdown();
                        return Ok(());
                    }
                    Err(e) => serving_on(&e),
                }
            }
            Ok(signal) => {
                log(format_args!(
                    "{signal}: finishing responses in flight and stopping"
                ));
                let _ = systemd::notify("STOPPING=1");
                server.shutdown();
                store_held(&server);
                if let Some(path) = owned_path {
                    let _ = std::fs::remove_file(path);
                }
                return Ok(());
            }
            Err(e) => return Err(format!("waiting for signals failed: {e}")),
        }
    }
}

/// An upgrade did not happen: the log and the service manager say why.
fn serving_on(why: &dyn std::fmt::Display) {
    logging::error(format_args!("{why}; this server serves on"));
    let _ = systemd::notify(&format!("STATUS={why}; this server serves on"));
}

/// What a previous server handed over: by an upgrade, or through the
/// service manager's fd store (SPEC §3.4). A store's sockets are emptied
/// here, so they leave the store too.
fn take_back(
    handover: Option<&upgrade::Handover>,
    stored: &[std::os::fd::OwnedFd],
) -> Result<handover::Received, String> {
    let mut handed = match handover {
        Some(handover) => handover
            .receive()
            .map_err(|e| format!("cannot take over from the previous server: {e}"))?,
        None => handover::Received::default(),
    };
    for socket in stored {
        match handover::read(socket, None) {
            Ok(received) => handed.merge(received),
            Err(e) => logging::error(format_args!(
                "cannot read the fd store's {}: {e}",
                handover::FDNAME
            )),
        }
    }
    if handover.is_some() || !stored.is_empty() {
        log(format_args!(
            "took over {} held and parked descriptors",
            handed.len()
        ));
    }
    if handed.damaged > 0 || !handed.complete {
        logging::error(format_args!(
            "the hand-over was cut short or damaged ({} entries unreadable): what it lacks is lost",
            handed.damaged
        ));
    }
    Ok(handed)
}

/// Stopping under a service manager: every held and parked fd goes into
/// its fd store, through one socket (SPEC §3.4). Without one, or with
/// nothing held, there is nothing to keep.
fn store_held(server: &Server) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match server.hand_over_to_store() {
        Ok(None) => {}
        Ok(Some((socket, count))) => {
            let state = format!("FDSTORE=1\nFDNAME={}", handover::FDNAME);
            match systemd::notify_with_fd(&state, Some(std::os::fd::AsFd::as_fd(&socket))) {
                Ok(_) => log(format_args!(
                    "{count} held and parked descriptors handed to the service manager's fd store"
                )),
                Err(e) => logging::error(format_args!(
                    "cannot store the held descriptors with the service manager: {e}; they are lost"
                )),
            }
        }
        Err(e) => logging::error(format_args!("{e}; the held descriptors are lost")),
    }
}

fn resolve_group(name: &str) -> Result<nix::unistd::Gid, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(gid));
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid),
        _ => Err(format!("unknown group {name:?} for --socket-group")),
    }
}

/// Many clients need many descriptors: take all the hard limit allows.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn echo(socket: Option<PathBuf>) -> i32 {
    let result = socket_path::resolve(socket)
        .map_err(|e| e.to_string())
        .and_then(|path| {
            socket_path::bind(&path, 0o666, None)
                .map_err(|e| e.to_string())
                .map(|l| (l, path))
        });
    match result {
        Ok((listener, path)) => {
            // The accept loop runs in a thread; this one waits for the
            // signal to stop, so the socket file goes with the server.
            let signals = SigSet::from_iter([Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT]);
            if let Err(e) = signals.thread_block() {
                log(format_args!("cannot block signals: {e}"));
                return exit::USAGE;
            }
            std::thread::spawn(move || {
                let output = std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned();
                match output {
                    Ok(output) => {
                        let _ = crate::echo::serve(listener, std::os::fd::AsFd::as_fd(&output));
                    }
                    Err(e) => log(format_args!("cannot duplicate stdout: {e}")),
                }
            });
            log(format_args!("echo demo listening on {}", path.display()));
            let _ = systemd::notify("READY=1");
            let signal = signals.wait();
            let _ = std::fs::remove_file(&path);
            // The signal's name, never wait's Result (it said `Ok(SIGINT)`).
            let signal = signal.map_or("a signal", |s| s.as_str());
            log(format_args!(
                "{signal}: stopped, {} removed",
                path.display()
            ));
            exit::OK
        }
        Err(message) => {
            log(message);
            exit::USAGE
        }
    }
}

fn explain_command(args: ExplainArgs) -> i32 {
    let policy = match Policy::load(&args.policy) {
        Ok(p) => p,
        Err(errors) => {
            print_policy_errors(&errors);
            return exit::USAGE;
        }
    };
    let client = match explained_client(&args) {
        Ok(client) => client,
        Err(message) => {
            logging::error(format_args!("{message}"));
            return exit::USAGE;
        }
    };
    if let Some(address) = &args.bind {
        return explain_bind(&policy, address, args.reuseport, &client);
    }
    if let (Some(name), Some(op)) = (&args.name, &args.op) {
        let Ok(op) = held_op_parser(op) else {
            logging::error(format_args!(
                "--op with --name is one of store, retrieve, list, drop, park, wake"
            ));
            return exit::USAGE;
        };
        let storer = args.storer.unwrap_or(client.uid);
        return explain_held(&policy, name, op, storer, &client);
    }
    let raw = args.path.clone().map(super::absolute).unwrap_or_default();
    let path = match normalize_path(raw.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            logging::error(format_args!("bad path: {e}"));
            return exit::USAGE;
        }
    };
    if let Some(op) = &args.op {
        let mode = match op.parse::<PathMode>() {
            Ok(mode) if PathMode::TREE.contains(&mode) => mode,
            _ => {
                logging::error(format_args!(
                    "--op with --path is one of stat, list, mkdir, delete"
                ));
                return exit::USAGE;
            }
        };
        return explain_tree(&policy, &path.path, mode, &client);
    }
    let mut request = FileRequest::plain(path, args.mode);
    request.create = args.creating.create.unwrap_or_default();
    request.truncate = args.creating.truncate;
    let explanation = explain(&policy, &request, &client);
    if args.json {
        println!("{}", explanation_json(&explanation, &client, &request));
    } else {
        print!("{}", explanation_text(&explanation, &client, &request));
    }
    if explanation.outcome.is_ok() {
        exit::OK
    } else {
        exit::REFUSED
    }
}

/// The client `explain` speaks for: yourself by default; a user by name or
/// uid with the gid and groups the system gives it (so root's own groups
/// never lend a grant to another uid), or the groups given with --gid.
fn explained_client(args: &ExplainArgs) -> Result<PeerIdentity, String> {
    use nix::unistd::{Uid, User};
    let user = match (&args.user, args.uid) {
        (Some(name), _) => Some(
            User::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| format!("unknown user {name:?}"))?,
        ),
        (None, Some(uid)) => User::from_uid(Uid::from_raw(uid)).ok().flatten(),
        (None, None) => None,
    };
    let mut client = match (&user, args.uid) {
        (Some(user), _) => {
            let name = std::ffi::CString::new(user.name.clone()).map_err(|e| e.to_string())?;
            let groups = nix::unistd::getgrouplist(&name, user.gid)
                .map_err(|e| format!("cannot list the groups of {}: {e}", user.name))?;
            PeerIdentity {
                pid: 0,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                groups: groups.into_iter().map(|g| g.as_raw()).collect(),
                cgroup: None,
                foreign_net: false,
                connection: 0,
            }
        }
        (None, Some(uid)) if args.gid.is_empty() => {
            return Err(format!(
                "uid {uid} has no user entry: give its groups with --gid"
            ));
        }
        (None, Some(uid)) => PeerIdentity {
            uid,
            ..PeerIdentity::current()
        },
        (None, None) => PeerIdentity::current(),
    };
    if let Some((primary, more)) = args.gid.split_first() {
        client.gid = *primary;
        client.groups = more.to_vec();
    }
    client.pid = 0;
    client.cgroup = match (&args.cgroup, &args.unit) {
        (Some(cgroup), _) => Some(cgroup.clone()),
        (None, Some(unit)) => Some(format!("/system.slice/{unit}")),
        (None, None) => None,
    };
    Ok(client)
}

/// `explain --bind`: each rule's verdict on the address, then the decision.
fn explain_bind(policy: &Policy, address: &str, reuseport: bool, client: &PeerIdentity) -> i32 {
    let address = match crate::address::BindAddress::parse(address) {
        Ok(a) => a,
        Err(e) => {
            logging::error(format_args!("{e}"));
            return exit::USAGE;
        }
    };
    let reuse = if reuseport { " with SO_REUSEPORT" } else { "" };
    println!(
        "request: bind {address}{reuse} as uid {} gid {}",
        client.uid, client.gid
    );
    print_verdicts(policy, |rule| {
        if !rule.binds.iter().any(|b| b.matches(&address)) {
            "no: none of its binds covers the address".to_owned()
        } else if let Err(m) = rule.check_client(client) {
            format!("no: {m}")
        } else if reuseport
            && rule.effect == crate::policy::Effect::Allow
            && rule.reuseport != Some(true)
        {
            "no: does not allow SO_REUSEPORT (reuseport)".to_owned()
        } else {
            "matches".to_owned()
        }
    });
    print_decision(policy.decide_bind(&address, reuseport, client))
}

/// One line per rule: its effect, its name, and `verdict` on it.
fn print_verdicts(policy: &Policy, verdict: impl Fn(&crate::policy::Rule) -> String) {
    let width = policy.rules.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for rule in &policy.rules {
        println!(
            "  {:<5} {:<width$}  {}",
            rule.effect.as_str(),
            rule.name,
            verdict(rule)
        );
    }
}

/// The decision line of `explain`, and its exit code.
fn print_decision(outcome: Result<&crate::policy::Rule, crate::decision::Refusal>) -> i32 {
    match outcome {
        Ok(rule) => {
            println!("decision: granted by rule {}", rule.name);
            exit::OK
        }
        Err(r) => {
            println!("decision: {}: {}", r.code, r.message);
            exit::REFUSED
        }
    }
}

fn held_op_parser(text: &str) -> Result<crate::protocol::HeldOp, String> {
    crate::protocol::HeldOp::parse(text)
        .ok_or_else(|| "one of store, retrieve, list, drop, park, wake".to_owned())
}

/// `explain --path P --op stat|list|mkdir|delete`: each rule's verdict,
/// then the decision on the requested path and, where a symlink leads
/// elsewhere, on the real one; implied `stat` only on a directory.
fn explain_tree(policy: &Policy, path: &Path, mode: PathMode, client: &PeerIdentity) -> i32 {
    println!(
        "request: {mode} {} as uid {} gid {}",
        path.display(),
        client.uid,
        client.gid
    );
    let wants = crate::decision::Wants::mode(mode);
    print_verdicts(policy, |rule| {
        if !rule.matches_path(path) {
            if mode == PathMode::Stat
                && rule.effect == crate::policy::Effect::Allow
                && rule.implies_stat(path)
            {
                match rule.check_client(client) {
                    Ok(()) => "matches (stat implied by its glob, on a directory only)".to_owned(),
                    Err(m) => format!("no: {m}"),
                }
            } else {
                "no: path matches none of its globs".to_owned()
            }
        } else if let Err(m) = rule.check_request(client, &wants) {
            format!("no: {m}")
        } else {
            "matches".to_owned()
        }
    });
    let mut scratch = crate::decision::Candidates::default();
    let outcome = policy
        .decide_tree_path(path, client, wants, &mut scratch)
        .and_then(|grant| {
            let located = crate::safe_open::locate(path).ok();
            let real = located
                .as_ref()
                .map(|l| l.real_path.as_path())
                .unwrap_or(path);
            let grant = if real != path {
                println!("real path: {}", real.display());
                policy.decide_tree_path(
                    real,
                    client,
                    wants,
                    &mut crate::decision::Candidates::default(),
                )?
            } else {
                grant
            };
            let is_dir = located
                .as_ref()
                .is_some_and(|l| l.facts.kind == crate::safe_open::FileKind::Directory);
            if grant.directories_only() && !is_dir {
                return Err(crate::decision::tree::not_a_granted_directory(client));
            }
            Ok(grant.rule())
        });
    print_decision(outcome)
}

/// `explain --name N --op OP`: each rule's verdict, then the decision.
fn explain_held(
    policy: &Policy,
    name: &str,
    op: crate::protocol::HeldOp,
    storer: u32,
    client: &PeerIdentity,
) -> i32 {
    if let Err(why) = crate::protocol::held::check_name(name, false) {
        logging::error(format_args!("bad name: {why}"));
        return exit::USAGE;
    }
    println!(
        "request: {} {name:?} stored by uid {storer}, as uid {} gid {}",
        op.as_str(),
        client.uid,
        client.gid
    );
    print_verdicts(policy, |rule| {
        if !rule.matches_name(name) {
            "no: none of its names covers it".to_owned()
        } else if !rule.ops().any(|o| o == op) {
            format!("no: its ops leave out {}", op.as_str())
        } else if !rule.stored_by.covers(storer, client.uid) {
            format!("no: its stored_by leaves out uid {storer}")
        } else if let Err(m) = rule.check_client(client) {
            format!("no: {m}")
        } else {
            "matches".to_owned()
        }
    });
    print_decision(policy.decide_held(op, name, storer, client))
}

fn explanation_text(e: &Explanation<'_>, client: &PeerIdentity, request: &FileRequest) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mode = request.mode;
    let extras = match (request.create, request.truncate) {
        (Create::No, false) => String::new(),
        (create, truncate) => {
            let mut parts = Vec::new();
            match create {
                Create::Yes => parts.push("create"),
                Create::Exclusive => parts.push("create exclusive"),
                Create::No => {}
            }
            if truncate {
                parts.push("truncate");
            }
            format!(" ({})", parts.join(", "))
        }
    };
    let _ = writeln!(
        out,
        "request: {mode}{extras} {} as uid {} gid {}",
        e.path.display(),
        client.uid,
        client.gid
    );
    if let Some(real) = &e.real_path {
        let _ = writeln!(out, "real path: {}", real.display());
    }
    let width = e.rules.iter().map(|v| v.rule.name.len()).max().unwrap_or(0);
    for v in &e.rules {
        let verdict = match &v.mismatch {
            None => "matches".to_owned(),
            Some(m) => format!("no: {m}"),
        };
        let _ = writeln!(
            out,
            "  {:<5} {:<width$}  {verdict}",
            v.rule.effect.as_str(),
            v.rule.name
        );
    }
    match &e.outcome {
        Ok(grant) if grant.created => {
            let _ = writeln!(
                out,
                "decision: granted by rule {}; the file would be created",
                grant.rule
            );
        }
        Ok(grant) => {
            let _ = writeln!(
                out,
                "decision: granted by rule {} ({} bytes)",
                grant.rule, grant.size
            );
        }
        Err(r) => {
            let _ = writeln!(out, "decision: {}: {}", r.code, r.message);
        }
    }
    out
}

fn explanation_json(
    e: &Explanation<'_>,
    client: &PeerIdentity,
    request: &FileRequest,
) -> serde_json::Value {
    let mode = request.mode;
    let rules: Vec<_> = e
        .rules
        .iter()
        .map(|v| {
            json!({
                "name": v.rule.name,
                "effect": v.rule.effect.as_str(),
                "matched": v.mismatch.is_none(),
                "reason": v.mismatch.as_ref().map(|m| m.to_string()),
            })
        })
        .collect();
    let decision = match &e.outcome {
        Ok(g) => {
            json!({"ok": true, "rule": g.rule, "path": g.path, "size": g.size, "mtime": g.mtime, "created": g.created})
        }
        Err(r) => json!({"ok": false, "code": r.code, "message": r.message, "rule": r.rule}),
    };
    json!({
        "path": json_path(&e.path).0,
        "real_path": e.real_path.as_deref().map(|p| json_path(p).0),
        "mode": mode,
        "create": request.create,
        "truncate": request.truncate,
        "uid": client.uid,
        "gid": client.gid,
        "groups": client.groups,
        "rules": rules,
        "decision": decision,
    })
}

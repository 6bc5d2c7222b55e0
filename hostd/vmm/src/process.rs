//! The VMM process: run one VM and serve its control socket until the VM ends.
//!
//! Started by hostd's `kvm` driver (as `drover vmm …` or `drover-vmm …`) in its own
//! process group, so it outlives hostd, with a run directory that holds the files named
//! in [`crate::control`]. On the way out it writes `exit.json` (how the VM ended) and
//! removes its socket. Exit status: 0 when the VM ended (whatever the guest did), 2 when
//! it could not start, 3 when it fenced itself (its host's lease passed).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{DiskConfig, NicConfig, VmConfig, CONSOLE_LOG_BYTES_DEFAULT};
use crate::control::{self, ExitRecord, OutgoingPhase, Phase, Request, Response, Status};
use crate::lease;
use crate::migration::receive::{self, Incoming};
use crate::migration::send::Outgoing;
use crate::vm::{Source, Vm};

/// The VMM's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct VmmArgs {
    /// Directory for the control socket, console log and exit record.
    #[arg(long)]
    pub run_dir: PathBuf,
    #[arg(long)]
    pub domain: String,
    #[arg(long, default_value_t = 1)]
    pub generation: u64,
    #[arg(long)]
    pub kernel: PathBuf,
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    #[arg(long, default_value = "")]
    pub cmdline: String,
    #[arg(long, default_value_t = 64)]
    pub memory_mib: u64,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// A raw disk image, served as virtio-blk: `PATH` or `PATH,rw` (writable), `PATH,ro`
    /// (read-only: opened read-only, offered as read-only, writes refused). Repeatable, up
    /// to 8; the guest finds the disks in this order. Only a last `,ro` or `,rw` is read as
    /// the mode (a file named `a,ro` is `a,ro,rw`).
    #[arg(long = "disk", value_name = "PATH[,ro|,rw]")]
    pub disks: Vec<DiskConfig>,
    /// A virtio-net NIC on an existing tap: `tap=NAME,mac=52:54:00:12:34:56` (repeatable).
    #[arg(long = "nic")]
    pub nics: Vec<NicConfig>,
    #[arg(long, default_value_t = CONSOLE_LOG_BYTES_DEFAULT)]
    pub console_log_bytes_max: u64,
    /// Continue from this snapshot file instead of booting the kernel (which is still
    /// needed for reboots). The other arguments must describe the same machine.
    #[arg(long)]
    pub restore_from: Option<PathBuf>,
    /// The host's lease file ([`crate::lease`]): the VM ends itself once it passes, and
    /// does not start if it already has.
    #[arg(long)]
    pub lease: Option<PathBuf>,
    /// Take the VM from a live migration instead of booting it: listen on this address
    /// (`ip:port`, port 0 picks one, written to the run directory's `incoming.addr`),
    /// receive one source's memory and state, build the VM paused, and run it only when
    /// the source says the switch-over is committed ([`crate::migration`]). The other
    /// arguments must describe the same machine; the control socket appears once the VM
    /// is built.
    #[arg(long, conflicts_with = "restore_from")]
    pub incoming: Option<String>,
    /// With --incoming: take the stream over mutual TLS with the host's certificate in
    /// this directory (`ca.pem`, `cert.pem`, `key.pem`), from --incoming-peer only.
    #[arg(long, requires_all = ["incoming", "incoming_peer"])]
    pub incoming_tls_dir: Option<PathBuf>,
    /// With --incoming-tls-dir: the source's host, as its certificate names it.
    #[arg(long, requires = "incoming_tls_dir")]
    pub incoming_peer: Option<String>,
}

/// The VMM binary's command line: run a VM (the flags of [`VmmArgs`]), or guard another
/// VM process with the host's lease (`fence-watch`).
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct VmmCli {
    #[command(subcommand)]
    pub tool: Option<VmmTool>,
    #[command(flatten)]
    pub run: Option<VmmArgs>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum VmmTool {
    /// Kill a VM process (a QEMU) once its host's lease passes; end when it does.
    FenceWatch(crate::lease::WatchArgs),
}

/// Run what `cli` asks; returns the process exit status.
pub fn main(cli: VmmCli) -> i32 {
    match (cli.tool, cli.run) {
        (Some(VmmTool::FenceWatch(args)), _) => crate::lease::guard(&args),
        (None, Some(args)) => run(args),
        (None, None) => {
            eprintln!("drover-vmm: give the VM's flags (--run-dir, --domain, --kernel, …) or a tool");
            2
        }
    }
}

fn write_exit(run_dir: &Path, record: &ExitRecord) {
    if let Err(e) = record.write(run_dir) {
        eprintln!("drover-vmm: writing the exit record: {e}");
    }
}

/// Run the VM described by `args` to its end; returns the process exit status.
pub fn run(args: VmmArgs) -> i32 {
    let config = VmConfig {
        domain: args.domain.clone(),
        generation: args.generation,
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        disks: args.disks,
        nics: args.nics,
        console_log: args.run_dir.join(control::CONSOLE_FILE),
        console_log_bytes_max: args.console_log_bytes_max,
    };
    let record = |phase, reason| ExitRecord {
        domain: args.domain.clone(),
        generation: args.generation,
        phase,
        reason,
    };
    let socket = args.run_dir.join(control::SOCKET_FILE);
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(args.run_dir.join(control::EXIT_FILE));
    let _ = std::fs::remove_file(args.run_dir.join(control::INCOMING_FILE));
    if let Some(lease) = args.lease.as_deref().filter(|l| lease::expired(l)) {
        let why = format!("its host's lease {} has passed: not started", lease.display());
        eprintln!("drover-vmm: {why}");
        write_exit(&args.run_dir, &record(Phase::Crashed, Some(why)));
        return 2;
    }
    // An incoming VM's memory and state come first: the VM exists only once they are in.
    let (source, incoming) = match &args.incoming {
        None => (args.restore_from.clone().map_or(Source::Kernel, Source::Snapshot), None),
        Some(address) => {
            let tls = args
                .incoming_tls_dir
                .clone()
                .zip(args.incoming_peer.clone())
                .map(|(dir, peer)| control::MigrationTls { dir, peer });
            let received = receive::prepare(&config).and_then(|prepared| {
                let listener = receive::listen(address, &args.run_dir)?;
                receive::receive(listener, &config, prepared, tls.as_ref())
            });
            match received {
                Ok(r) => (Source::Migrated(Box::new((r.memory, r.state, r.shell))), Some(r.incoming)),
                Err(e) => {
                    let why = format!("incoming migration: {e}");
                    eprintln!("drover-vmm: {why}");
                    write_exit(&args.run_dir, &record(Phase::Crashed, Some(why)));
                    return 2;
                }
            }
        }
    };
    // The socket exists before the guest runs, so whoever sees the guest's first output
    // can already reach its VMM. It is bound under another name and renamed once it
    // listens: a client that finds the socket never meets it between bind and listen
    // (connection refused; seen under load).
    let bound = socket.with_extension("sock.tmp");
    let _ = std::fs::remove_file(&bound);
    let listener = match UnixListener::bind(&bound).and_then(|l| std::fs::rename(&bound, &socket).map(|()| l))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("drover-vmm: binding {}: {e}", socket.display());
            write_exit(&args.run_dir, &record(Phase::Crashed, Some(format!("control socket: {e}"))));
            return 2;
        }
    };
    let vm = match Vm::start_from(config, &source) {
        Ok(vm) => Arc::new(vm),
        Err(e) => {
            eprintln!("drover-vmm: {e}");
            if let Some(incoming) = incoming {
                incoming.refuse(&e.to_string());
            }
            drop(listener);
            let _ = std::fs::remove_file(&socket);
            write_exit(&args.run_dir, &record(Phase::Crashed, Some(e.to_string())));
            return 2;
        }
    };
    drop(source); // the migrated memory is the VM's now; the box held one more mapping
    if let Some(Err(e)) = incoming.map(|i: Incoming| i.ready(vm.clone())) {
        // Paused and unreachable for the source: its host destroys it.
        eprintln!("drover-vmm: telling the source the VM is ready: {e}");
    }
    if let Some(path) = args.lease.clone() {
        let (run_dir, domain, generation) = (args.run_dir.clone(), args.domain.clone(), args.generation);
        let watching = lease::watch(path, move || {
            // Ends the whole process, vCPU threads included: the guest stops here.
            let reason = "fenced itself: its host's lease passed".to_owned();
            eprintln!("drover-vmm: {reason}");
            let record = ExitRecord {
                domain: domain.clone(),
                generation,
                phase: Phase::Crashed,
                reason: Some(reason),
            };
            write_exit(&run_dir, &record);
            std::process::exit(3);
        });
        if let Err(e) = watching {
            eprintln!("drover-vmm: cannot watch the lease: {e}");
            let _ = vm.destroy(); // unwatched, it may not run at all
        }
    }
    // Held while a request is handled, so the process never exits mid-answer.
    let serving = Arc::new(Mutex::new(()));
    let outgoing: Arc<Mutex<Option<Outgoing>>> = Arc::new(Mutex::new(None));
    {
        let (vm, serving, run_dir) = (vm.clone(), serving.clone(), args.run_dir.clone());
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let _guard = serving.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = serve(&vm, &outgoing, &run_dir, stream) {
                        eprintln!("drover-vmm: control connection: {e}");
                    }
                }
            })
            .expect("spawning the control thread");
    }
    let (phase, reason) = vm.wait();
    let _guard = serving.lock().unwrap_or_else(|p| p.into_inner());
    eprintln!("drover-vmm: VM ended: {phase:?} {}", reason.as_deref().unwrap_or(""));
    // The record first: whoever finds the socket gone finds how the run ended.
    write_exit(&args.run_dir, &record(phase, reason));
    let _ = std::fs::remove_file(&socket);
    0
}

fn status(vm: &Vm, outgoing: &Mutex<Option<Outgoing>>) -> Status {
    let (phase, reason, exits) = vm.status();
    let migration = outgoing.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(Outgoing::status);
    Status {
        domain: vm.config().domain.clone(),
        generation: vm.config().generation,
        pid: std::process::id(),
        phase,
        reason,
        exits,
        migration,
    }
}

/// The answers to the live-migration requests.
fn migrate(vm: &Arc<Vm>, outgoing: &Mutex<Option<Outgoing>>, request: Request) -> Response {
    let mut out = outgoing.lock().unwrap_or_else(|p| p.into_inner());
    match request {
        Request::MigrateSend { address, limits, tls } => {
            if out.as_ref().is_some_and(Outgoing::active) {
                return Response::Error("a migration is already under way".into());
            }
            if !matches!(vm.status().0, Phase::Running | Phase::Paused) {
                return Response::Error(format!("the VM is {:?}: nothing to migrate", vm.status().0));
            }
            *out = Some(Outgoing::start(vm.clone(), address, limits, tls));
            drop(out);
            Response::Ok(status(vm, outgoing))
        }
        Request::MigrateLimits { limits } => match out.as_ref() {
            Some(o) if o.status().phase == OutgoingPhase::Copying => {
                o.set_limits(limits);
                drop(out);
                Response::Ok(status(vm, outgoing))
            }
            _ => Response::Error("no copy is under way".into()),
        },
        Request::MigrateSwitch => match out.as_ref().map(|o| o.switch(vm)) {
            None => Response::Error("no migration to switch over".into()),
            Some(Ok(progress)) => Response::Migrated(progress),
            Some(Err(e)) => Response::Error(e.to_string()),
        },
        Request::MigrateCancel => {
            match out.as_ref() {
                None => return Response::Error("no migration to cancel".into()),
                Some(o) => o.cancel(vm),
            }
            drop(out);
            Response::Ok(status(vm, outgoing))
        }
        other => Response::Error(format!("{other:?} is no migration request")),
    }
}

/// Answer every request on one connection.
fn serve(
    vm: &Arc<Vm>,
    outgoing: &Mutex<Option<Outgoing>>,
    run_dir: &Path,
    stream: UnixStream,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_millis(control::REQUEST_TIMEOUT_MS)))?;
    let mut reader = BufReader::new(&stream);
    loop {
        let mut line = String::new();
        if (&mut reader).take(control::LINE_BYTES_MAX as u64).read_line(&mut line)? == 0 {
            return Ok(());
        }
        let response = match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Response::Error(format!("bad request: {e}")),
            Ok(Request::Snapshot { path }) => match vm.snapshot(&path) {
                Ok(info) => Response::Snapshot(info),
                Err(e) => Response::Error(e.to_string()),
            },
            Ok(
                request @ (Request::MigrateSend { .. }
                | Request::MigrateLimits { .. }
                | Request::MigrateSwitch
                | Request::MigrateCancel),
            ) => migrate(vm, outgoing, request),
            Ok(request) => {
                let done = match request {
                    Request::Status => Ok(()),
                    Request::Pause => vm.pause(),
                    Request::Resume => vm.resume(),
                    Request::Shutdown => vm.shutdown(),
                    Request::Reboot => vm.reboot(),
                    Request::Snapshot { .. }
                    | Request::MigrateSend { .. }
                    | Request::MigrateLimits { .. }
                    | Request::MigrateSwitch
                    | Request::MigrateCancel => unreachable!("answered above"),
                    Request::Destroy => {
                        if let Err(e) = vm.destroy() {
                            // A vCPU stuck in KVM_RUN cannot be stopped from here: end the
                            // process, which ends the VM with it.
                            eprintln!("drover-vmm: {e}; exiting to end the VM");
                            let record = ExitRecord {
                                domain: vm.config().domain.clone(),
                                generation: vm.config().generation,
                                phase: Phase::Destroyed,
                                reason: Some(format!("destroyed on request ({e}; the VMM exited)")),
                            };
                            write_exit(run_dir, &record);
                            std::process::exit(0);
                        }
                        Ok(())
                    }
                };
                match done {
                    Ok(()) => Response::Ok(status(vm, outgoing)),
                    Err(e) => Response::Error(e.to_string()),
                }
            }
        };
        let mut out = serde_json::to_string(&response).expect("responses serialize");
        out.push('\n');
        (&stream).write_all(out.as_bytes())?;
    }
}

//! Drover's host agent.
//!
//! Contract: hostd registers its host, reconciles the domains placed on it (desired state
//! in the cluster against what the hypervisor reports) and reports observations back as
//! commands that carry the domain's generation. Hypervisors sit behind one driver trait
//! (`driver`).
//!
//! Drivers: `kvm` (Drover's own VMM, crate `vmm`, one `drover vmm` process per VM over a
//! Unix socket), `qemu` (one QEMU per VM over QMP; KVM or TCG) and the deterministic
//! `fake` (boot and shutdown delays, injected crashes). The process drivers keep each VM's
//! files in a run directory (`vm_dir`) and re-adopt running VMs after a hostd restart;
//! every driver passes the shared suite in `conformance`. The pure `reconciler` decides,
//! `pass` carries out one reconcile pass on a driver (shared with the simulator), the
//! `agent` loop reads the cluster state from the host's own learner replica (or through
//! the public API, converted to the model by `proto::convert`, so that both paths take
//! their share with `assignment`) and reports through the API; phases are the model's
//! `ObservedPhase` from the driver to the report; `process` is the `drover hostd` process
//! around it (command line, learner replica, driver choice). NICs: both process drivers plug each into
//! a tap in its network's bridge (`tap`) before the VM process starts; QEMU and the own
//! VMM then attach a virtio-net device to that tap. Snapshots: every driver saves a
//! running or paused VM's whole state to a file and starts a VM from one
//! (`VmSpec::restore_from`); a disk-only snapshot of a stopped domain images its writable
//! disks (`Driver::disk_snapshot`; on disk, `disk_images`) and a revert writes them back
//! before the next boot (`VmSpec::disks_from`); `snapshots` takes the ones the cluster
//! asks of this host, reports them, and removes the files of snapshots the cluster no
//! longer holds.
//! Volumes: `volumes` carries out the volume operations the cluster asks of this host
//! (through `Driver::volume`; on disk, `dir_pool` makes, grows and removes the files of
//! directory pools with std and `qemu-img`) and reports each. Networks: `networks` has
//! the host serve every isolated or NAT network one of its VMs is on (through
//! `Driver::serve_networks`; on this host, `net_host`: the bridge with the network's
//! address, and a `dnsmasq` giving each NIC the address IPAM recorded by DHCP and
//! answering the domains' names) and takes away the networks it no longer serves.
//! Leases (`lease`): hostd renews its host's lease with the leader by heartbeat, writes
//! the deadline where its VM processes watch it, and while it has passed destroys every
//! VM and starts none (self-fencing); a host the leader has fenced destroys its VMs and
//! registers again. Live migrations: `migrations` carries out this host's side of the
//! saga (the target prepares an incoming VM and reports its address; the source copies
//! its VM there, reports progress, commits the switch-over through the log and only then
//! switches; `Driver::prepare_incoming`/`migrate_out`/`outgoing`/`migrate_switch`/
//! `migrate_cancel`, the own VMM's live migration behind the `kvm` driver); the
//! reconciler leaves a migrating domain's VM to it.
#![forbid(unsafe_code)]

pub mod agent;
pub mod assignment;
pub mod conformance;
pub mod console;
pub mod dir_pool;
pub mod disk_images;
pub mod driver;
pub mod fake;
pub mod kvm;
pub mod lease;
pub mod metrics;
pub mod migrations;
pub mod net_host;
pub mod networks;
pub mod pass;
pub mod process;
pub mod qemu;
pub mod reconciler;
pub mod snapshots;
pub mod tap;
pub mod vm_dir;
pub mod volumes;

//! Networks that deliver what IPAM recorded, end to end with a real hostd and the Debian
//! Linux guest under the qemu driver: two guests on an isolated network get their
//! recorded addresses from the host's DHCP server (dnsmasq), one finds the other by name
//! through the host's DNS and pings it; once no VM of the network runs on the host, its
//! bridge, DHCP server and rules are gone, and the network can be deleted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{drover_bin, drover_cli as drover, linux_guest, wait_for, KillOnDrop, KillVmsOnDrop, Processes};

fn console(run: &Path, domain: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(run.join(domain).join("console.log")).unwrap_or_default())
        .into_owned()
}

/// The network's leases as the cluster recorded them: domain → address.
fn leases(endpoint: &str, network: &str) -> Vec<(String, String)> {
    let list: serde_json::Value =
        serde_json::from_str(&drover(endpoint, &["--output", "json", "net", "list"])).unwrap();
    let net = list.as_array().unwrap().iter().find(|n| n["name"] == network).unwrap().clone();
    net["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["domain"].as_str().unwrap().to_owned(), l["ip"].as_str().unwrap().to_owned()))
        .collect()
}

/// Live dnsmasq processes serving `bridge`.
fn dhcp_servers(bridge: &str) -> usize {
    let procs = std::fs::read_dir("/proc").unwrap().flatten();
    procs
        .filter(|p| p.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(&format!("--interface={bridge}")))
        .count()
}

fn rules_for(bridge: &str) -> usize {
    ["nat", "filter"]
        .iter()
        .map(|t| {
            let out = Command::new("iptables-save").args(["-t", t]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).matches(&format!("drover {bridge}")).count()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_get_their_recorded_addresses_by_dhcp_and_find_each_other_by_name() {
    let ok = Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success())
        && Command::new("dnsmasq").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "qemu-system-x86_64 or dnsmasq is not installed; scripts/deps installs them");
    let (kernel, initrd) = linux_guest();
    let mut p = Processes::new();
    let ep = p.bootstrap(tests::NO_HOSTD).await;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let _vms = KillVmsOnDrop(run.clone());
    let log = std::fs::File::create(dir.path().join("hostd.log")).unwrap();
    let _hostd = KillOnDrop(
        Command::new(drover_bin())
            .args(["--endpoint", &ep, "hostd", "--name", "h1", "--driver", "qemu", "--tick-ms", "50"])
            .args(["--vcpus", "8", "--memory-mib", "4096", "--run-dir"])
            .arg(&run)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    wait_for("h1 to be ready", Duration::from_secs(30), || async {
        drover(&ep, &["host", "list"])
            .lines()
            .any(|l| l.starts_with("h1 ") && l.contains(" ready "))
            .then_some(())
    })
    .await;
    // A name of its own (bridges are named for networks, and tests share the host).
    let network = format!("dh{}", std::process::id() % 100_000);
    let bridge = hostd::driver::isolated_bridge(&network);
    drover(&ep, &["net", "create", &network, "--mode", "isolated", "--cidr", "10.247.3.0/24"]);
    let define = |name: &str, extra: &str| {
        let file = dir.path().join(format!("{name}.yaml"));
        let body = format!(
            "vcpus: 1\nmemory_mib: 256\nkernel: {kernel}\ninitrd: {initrd}\n\
             cmdline: console=ttyS0 panic=-1 drover.dhcp=1 {extra}\nnics: [{{network: {network}}}]\n"
        );
        std::fs::write(&file, body).unwrap();
        drover(&ep, &["domain", "define", name, "--file", file.to_str().unwrap()]);
    };
    define("alpha", "");
    define("beta", "drover.resolve=alpha drover.ping=alpha");
    let recorded = leases(&ep, &network);
    let ip_of = |d: &str| recorded.iter().find(|(dom, _)| dom == d).map(|(_, ip)| ip.clone()).unwrap();
    let (alpha_ip, beta_ip) = (ip_of("alpha"), ip_of("beta"));
    drover(&ep, &["domain", "start", "alpha"]);
    drover(&ep, &["domain", "start", "beta"]);

    let got = |domain: &str, ip: &str| {
        let c = console(&run, domain);
        c.contains(&format!(" {ip}/24 mtu=1450 dns=10.247.3.1")).then_some(c)
    };
    wait_for("alpha's address by DHCP", Duration::from_secs(120), || async { got("alpha", &alpha_ip) }).await;
    wait_for("beta's address by DHCP", Duration::from_secs(120), || async { got("beta", &beta_ip) }).await;
    let beta = wait_for("beta to find and ping alpha by name", Duration::from_secs(120), || async {
        let c = console(&run, "beta");
        c.contains(&format!("DROVER-PING-OK {alpha_ip}")).then_some(c)
    })
    .await;
    assert!(beta.contains(&format!("DROVER-RESOLVED alpha {alpha_ip}")), "{beta}");
    assert_eq!(dhcp_servers(&bridge), 1, "one DHCP server for the network");
    let addrs = Command::new("ip").args(["-4", "-o", "addr", "show", "dev", &bridge]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&addrs.stdout).contains("10.247.3.1/24"),
        "the host serves at the gateway address"
    );
    assert_eq!(
        rules_for(&bridge),
        3,
        "an isolated network is not forwarded: its guests reach only each other"
    );

    // Once no VM of the network runs here, the host takes it away; then it can go.
    for d in ["alpha", "beta"] {
        drover(&ep, &["domain", "destroy", d]);
    }
    wait_for("the network's plumbing to go", Duration::from_secs(60), || async {
        let gone = !Path::new("/sys/class/net").join(&bridge).exists() && dhcp_servers(&bridge) == 0;
        gone.then_some(())
    })
    .await;
    assert_eq!(rules_for(&bridge), 0, "no rule left for the network");
    for d in ["alpha", "beta"] {
        wait_for(&format!("{d} to stop"), Duration::from_secs(30), || async {
            let info: serde_json::Value =
                serde_json::from_str(&drover(&ep, &["--output", "json", "domain", "info", d])).ok()?;
            (info["phase"] == "stopped").then_some(())
        })
        .await;
        drover(&ep, &["domain", "undefine", d]);
    }
    drover(&ep, &["net", "delete", &network]);
    let leftovers: Vec<_> = std::fs::read_dir(hostd::net_host::SERVER_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&bridge))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "the DHCP server's files are gone: {leftovers:?}");
}

//! A network across hosts, end to end: two hostd processes in network namespaces of their
//! own (each its own host, with its own address), the control plane in a third, all made
//! by this test. Two Debian Linux guests of one NAT network, one on each host, get their
//! recorded addresses by DHCP from their own host and reach each other by name over the
//! hosts' VXLAN overlay (the network's VNI, as recorded); one reaches an address of the
//! control namespace, which has no route back to the network, through its own host's
//! masquerading. Once their VMs are gone, neither host keeps the network's bridge,
//! overlay, DHCP server or rules.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tests::{drover_bin, free_port, linux_guest, wait_for};

/// Processes and namespaces of the test, taken away when it ends, pass or fail.
struct World {
    namespaces: Vec<String>,
    children: Vec<Child>,
    run: PathBuf,
    bridge: String,
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("pkill").arg("-9").arg("-f").arg(self.run.display().to_string()).status();
        let _ = Command::new("pkill").args(["-f", "--"]).arg(format!("--interface={}", self.bridge)).status();
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().unwrap();
    assert!(out.status.success(), "{ns}: {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn console(run: &Path, host: &str, domain: &str) -> String {
    let path = run.join(host).join(domain).join("console.log");
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn link_exists(ns: &str, name: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ip", "link", "show", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guests_on_two_hosts_reach_each_other_over_the_overlay() {
    let ok = Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success())
        && Command::new("dnsmasq").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "qemu-system-x86_64 or dnsmasq is not installed; scripts/deps installs them");
    let (kernel, initrd) = linux_guest();
    let id = std::process::id() % 100_000;
    let k = id % 200 + 10;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let network = format!("ov{id}");
    let bridge = hostd::driver::isolated_bridge(&network);
    let (control, host_a, host_b) = (format!("drvc{id}"), format!("drva{id}"), format!("drvh{id}"));
    let mut world = World {
        namespaces: vec![control.clone(), host_a.clone(), host_b.clone()],
        children: Vec::new(),
        run: run.clone(),
        bridge: bridge.clone(),
    };

    // The hosts' network: a bridge in the control namespace, a veth to each host.
    for ns in &world.namespaces {
        sh(&["ip", "netns", "add", ns]);
        in_ns(ns, &["ip", "link", "set", "lo", "up"]);
    }
    in_ns(&control, &["ip", "link", "add", "hosts", "type", "bridge"]);
    in_ns(&control, &["ip", "addr", "add", &format!("10.250.{k}.1/24"), "dev", "hosts"]);
    in_ns(&control, &["ip", "link", "set", "hosts", "up"]);
    for (i, ns) in [&host_a, &host_b].into_iter().enumerate() {
        let (outer, inner) = (format!("up{i}"), format!("eth{i}"));
        in_ns(&control, &["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", ns]);
        in_ns(&control, &["ip", "link", "set", &outer, "master", "hosts", "up"]);
        in_ns(ns, &["ip", "addr", "add", &format!("10.250.{k}.{}/24", i + 2), "dev", &inner]);
        in_ns(ns, &["ip", "link", "set", &inner, "up"]);
    }

    // The control plane, then one hostd per host.
    let endpoint = format!("10.250.{k}.1:{}", free_port());
    let log = |name: &str| std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
    let spawn = |ns: &str, args: &[&str], log: std::fs::File| {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(drover_bin())
            .args(args)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    };
    let data = dir.path().join("data").display().to_string();
    let peer = format!("10.250.{k}.1:{}", free_port());
    let server = [
        "server",
        "--id",
        "1",
        "--listen",
        &endpoint,
        "--peer-listen",
        &peer,
        "--insecure",
        "--bootstrap",
        "--data-dir",
        &data,
    ];
    world.children.push(spawn(&control, &server, log("server")));
    let drover = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &control])
            .arg(drover_bin())
            .args(["--endpoint", &endpoint])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (i, (ns, name)) in [(&host_a, "ha"), (&host_b, "hb")].into_iter().enumerate() {
        let address = format!("10.250.{k}.{}:7500", i + 2);
        let run_dir = run.join(name).display().to_string();
        let label = format!("side={name}");
        let args = [
            "--endpoint",
            &endpoint,
            "hostd",
            "--name",
            name,
            "--driver",
            "qemu",
            "--tick-ms",
            "50",
            "--vcpus",
            "8",
            "--memory-mib",
            "4096",
            "--address",
            &address,
            "--label",
            &label,
            "--run-dir",
            &run_dir,
        ];
        world.children.push(spawn(ns, &args, log(name)));
    }
    wait_for("both hosts to be ready", Duration::from_secs(60), || async {
        let (ok, out, _) = drover(&["host", "list"]);
        (ok && out.lines().filter(|l| l.contains(" ready ")).count() == 2).then_some(())
    })
    .await;

    let (ok, _, err) =
        drover(&["net", "create", &network, "--mode", "nat", "--cidr", &format!("10.246.{k}.0/24")]);
    assert!(ok, "{err}");
    let outside = format!("10.250.{k}.1");
    let alpha_extra = format!("drover.ping={outside}");
    for (name, side, extra) in
        [("alpha", "ha", alpha_extra.as_str()), ("beta", "hb", "drover.resolve=alpha drover.ping=alpha")]
    {
        let file = dir.path().join(format!("{name}.yaml"));
        let body = format!(
            "vcpus: 1\nmemory_mib: 256\nkernel: {kernel}\ninitrd: {initrd}\n\
             cmdline: console=ttyS0 panic=-1 drover.dhcp=1 {extra}\nnics: [{{network: {network}}}]\n\
             required_labels: {{side: {side}}}\n"
        );
        std::fs::write(&file, body).unwrap();
        let (ok, _, err) = drover(&["domain", "define", name, "--file", file.to_str().unwrap()]);
        assert!(ok, "{err}");
        let (ok, _, err) = drover(&["domain", "start", name]);
        assert!(ok, "{err}");
    }
    let (_, nets, _) = drover(&["--output", "json", "net", "list"]);
    let nets: serde_json::Value = serde_json::from_str(&nets).unwrap();
    let net = nets.as_array().unwrap().iter().find(|n| n["name"] == network.as_str()).unwrap().clone();
    let ip_of = |d: &str| {
        net["leases"].as_array().unwrap().iter().find(|l| l["domain"] == d).unwrap()["ip"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (alpha_ip, beta_ip) = (ip_of("alpha"), ip_of("beta"));

    for (host, domain, ip) in [("ha", "alpha", &alpha_ip), ("hb", "beta", &beta_ip)] {
        wait_for(&format!("{domain}'s address by DHCP on {host}"), Duration::from_secs(120), || async {
            console(&run, host, domain).contains(&format!(" {ip}/24 mtu=1450 ")).then_some(())
        })
        .await;
    }
    let beta = wait_for("beta (on hb) to ping alpha (on ha) by name", Duration::from_secs(120), || async {
        let c = console(&run, "hb", "beta");
        c.contains(&format!("DROVER-PING-OK {alpha_ip}")).then_some(c)
    })
    .await;
    assert!(beta.contains(&format!("DROVER-RESOLVED alpha {alpha_ip}")), "{beta}");
    wait_for("alpha (on ha) to reach the control namespace", Duration::from_secs(120), || async {
        console(&run, "ha", "alpha").contains(&format!("DROVER-PING-OK {outside}")).then_some(())
    })
    .await;
    // It left through its own host: ha's masquerade rule counted it. (hb's has been seen
    // to count one echo request too, once: not understood yet, see the notes.)
    let masqueraded = |ns: &str| {
        let rules = in_ns(ns, &["iptables-save", "-c", "-t", "nat"]);
        let line = rules
            .lines()
            .find(|l| l.contains("MASQUERADE") && l.contains(&bridge))
            .unwrap_or_default()
            .to_owned();
        line.trim_start_matches('[').split(':').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
    };
    assert!(masqueraded(&host_a) > 0, "ha masqueraded alpha's packets");
    assert!(masqueraded(&host_a) >= masqueraded(&host_b), "alpha's traffic leaves through ha");
    let overlay = hostd::driver::overlay_of(&bridge);
    for ns in [&host_a, &host_b] {
        let details = in_ns(ns, &["ip", "-d", "link", "show", &overlay]);
        let vni = net["vni"].as_u64().unwrap_or_default();
        assert!(vni > 0 && details.contains(&format!("vxlan id {vni} ")), "{ns}: {details}");
    }

    // Once the VMs are gone, neither host keeps the network.
    for d in ["alpha", "beta"] {
        let (ok, _, err) = drover(&["domain", "destroy", d]);
        assert!(ok, "{err}");
    }
    wait_for("both hosts to take the network away", Duration::from_secs(60), || async {
        let gone =
            [&host_a, &host_b].iter().all(|ns| !link_exists(ns, &bridge) && !link_exists(ns, &overlay));
        gone.then_some(())
    })
    .await;
    for ns in [&host_a, &host_b] {
        let rules = in_ns(ns, &["iptables-save"]);
        assert!(!rules.contains(&format!("drover {bridge}")), "{ns} keeps no rule of the network");
    }
    let servers =
        Command::new("pgrep").args(["-f", "--"]).arg(format!("--interface={bridge}")).output().unwrap();
    assert_eq!(
        servers.status.code(),
        Some(1),
        "no DHCP server left: {}",
        String::from_utf8_lossy(&servers.stdout)
    );
    drop(world);
}

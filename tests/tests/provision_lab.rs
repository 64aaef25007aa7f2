//! Provisioning (issue 15) in the lab with real clients: hosts written through the API reach
//! DHCP and the kernel's reply cache at once; a node with intent `install` gets its installer,
//! phones home `installed` with its boot token, and its next script boots the local disk; token
//! scopes are enforced and every write audited; the CLI over the control socket.

use std::process::Command;
use tests::kit::Setup;
use tests::probe::Dora;
use tests::{bin, require_root};

const BASE: &str = "http://10.77.0.1:8080";
const TEMPLATE: &str = "#!ipxe\necho intent={{ intent }} host={{ hostname }}\nkernel vmlinuz phone_home={{ phone_home }}\nboot\n";

fn setup(tag: &str) -> Setup {
    let s = Setup::new(tag, |dir| {
        format!(
            "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{state}\"\n\
             [dhcp]\nsubnet = \"10.77.0.0/16\"\npools = [\"10.77.1.1-10.77.1.254\"]\n\
             [[dhcp.host]]\nmac = \"52:54:00:cc:00:01\"\nip = \"10.77.0.9\"\nhostname = \"seed-001\"\n\
             [boot]\nipxe_script = \"http://{{server}}:8080/boot.ipxe\"\n\
             [http]\nlisten = \"0.0.0.0:8080\"\nroot = \"{http}\"\n\
             [api]\ntokens_file = \"tokens\"\n",
            state = dir.join("state").display(),
            http = dir.join("http").display(),
        )
    });
    std::fs::create_dir_all(s.dir.join("http")).unwrap();
    std::fs::write(s.dir.join("http/boot.ipxe.j2"), TEMPLATE).unwrap();
    s
}

/// `netboot-xdp token add NAME --scope SCOPE -c CONFIG`: the token printed.
fn token(s: &Setup, name: &str, scope: &str) -> String {
    let out = Command::new(bin("netboot-xdp")).args(["token", "add", name, "--scope", scope, "-c"]).arg(&s.config).output().unwrap();
    assert!(out.status.success(), "token add: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn auth(t: &str) -> String {
    format!("Authorization: Bearer {t}")
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[test]
fn install_phones_home_then_the_node_boots_its_disk_and_api_hosts_reach_the_kernel() {
    if !require_root("install_phones_home_then_the_node_boots_its_disk_and_api_hosts_reach_the_kernel") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("prov");
    let (writer, reader, admin) = (token(&s, "ci", "write"), token(&s, "grafana", "read"), token(&s, "boss", "admin"));
    let tokens = std::fs::read_to_string(s.dir.join("tokens")).unwrap();
    assert!(!tokens.contains(&writer), "a token stored in clear");
    let agent = s.start();
    let mac = "52:54:00:cc:00:50";
    s.set_client_mac(mac);
    let host = format!("{BASE}/api/v1/hosts/{mac}");
    let put = |t: &str, body: &str| s.curl(&["-X", "PUT", "-H", &auth(t), "-H", "Content-Type: application/json", "-d", body, &host]);

    // Scopes: 401 without a token or with a wrong one, 403 with one too small, then 201.
    assert_eq!(s.curl(&[&format!("{BASE}/api/v1/hosts")]).0, 401);
    assert_eq!(s.curl(&["-H", &auth("nbx_wrong"), &format!("{BASE}/api/v1/hosts")]).0, 401);
    assert_eq!(s.curl(&["-H", &auth(&reader), &format!("{BASE}/api/v1/hosts")]).0, 200);
    let doc = r#"{"ip":"10.77.0.50","hostname":"node-050","intent":"install","vars":{"disk":"sda"}}"#;
    assert_eq!(put(&reader, doc).0, 403);
    let (code, body) = put(&writer, doc);
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["intent_once"], true);
    // The config's hosts are read-only here, and say so.
    let (code, body) = s.curl(&["-X", "PUT", "-H", &auth(&writer), "-d", r#"{"ip":"10.77.0.9"}"#, &format!("{BASE}/api/v1/hosts/52:54:00:cc:00:01")]);
    assert_eq!(code, 409);
    assert!(String::from_utf8_lossy(&body).contains("managed by the config"), "{}", String::from_utf8_lossy(&body));
    // An address another host has is refused.
    assert_eq!(s.curl(&["-X", "PUT", "-H", &auth(&writer), "-d", r#"{"ip":"10.77.0.9"}"#, &format!("{BASE}/api/v1/hosts/52:54:00:cc:00:51")]).0, 409);

    // DHCP serves the API's host at once (udhcpc), and the script is the installer's with a
    // phone-home URL of its own.
    assert_eq!(s.udhcpc("bound", &[])["ip"], "10.77.0.50");
    let (code, script) = s.curl(&[&format!("{BASE}/boot.ipxe?mac={mac}")]);
    let script = String::from_utf8(script).unwrap();
    assert_eq!(code, 200);
    assert!(script.contains("intent=install host=node-050"), "{script}");
    let phone_home = script.split("phone_home=").nth(1).unwrap().lines().next().unwrap().to_string();
    assert!(phone_home.starts_with(&format!("{BASE}/api/v1/nodes/{mac}/events?token=")), "{phone_home}");
    // The script fetched again (a retried boot) keeps the URL the installer may already have.
    let (_, again) = s.curl(&[&format!("{BASE}/boot.ipxe?mac={mac}")]);
    assert!(String::from_utf8_lossy(&again).contains(&phone_home), "a second script changed the token");

    // A wrong boot token is refused; the installer's report with the right one turns the
    // intent to local, and the next script boots the local disk, explicitly.
    let bad = phone_home.replace("token=", "token=0");
    assert_eq!(s.curl(&["-X", "POST", "-d", r#"{"event":"installed"}"#, &bad]).0, 401);
    let (code, body) = s.curl(&["-X", "POST", "-d", r#"{"event":"installed","message":"debian 13"}"#, &phone_home]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["intent"], "local");
    let (_, script) = s.curl(&[&format!("{BASE}/boot.ipxe?mac={mac}")]);
    let script = String::from_utf8(script).unwrap();
    assert!(script.starts_with("#!ipxe") && script.contains("sanboot") && script.contains("\nexit"), "{script}");
    let (_, events) = s.curl(&["-H", &auth(&reader), &format!("{BASE}/api/v1/nodes/{mac}/events")]);
    assert_eq!(json(&events)[0]["event"], "installed");
    let (_, node) = s.curl(&["-H", &auth(&reader), &format!("{BASE}/api/v1/nodes/{mac}")]);
    assert!(json(&node)["events"].as_array().unwrap().iter().any(|e| e["stage"] == "event"), "not on the timeline");

    // A PXE machine seen before it is a host: once added, its next DISCOVER is answered by
    // the kernel with the host's address; changed, it gets the new address at once, from the
    // kernel again.
    let dora = Dora::open(&s.lab);
    let m2 = [0x52, 0x54, 0, 0xcc, 0, 0x60];
    let discover = dora.discover_pxe(m2);
    assert_eq!(dora.offers_to(&discover).len(), 1, "a pool address first");
    let fast = |a: &netboot_lab::Agent| a.counters().unwrap()["fast_offer"];
    let h2 = format!("{BASE}/api/v1/hosts/52:54:00:cc:00:60");
    assert_eq!(s.curl(&["-X", "PUT", "-H", &auth(&writer), "-d", r#"{"ip":"10.77.0.60","hostname":"node-060"}"#, &h2]).0, 201);
    let before = fast(&agent);
    assert_eq!(dora.offers_to(&discover), vec!["10.77.0.60".parse::<std::net::Ipv4Addr>().unwrap()]);
    assert_eq!(fast(&agent), before + 1, "the API's host was not answered by the kernel");
    assert_eq!(s.curl(&["-X", "PATCH", "-H", &auth(&writer), "-d", r#"{"ip":"10.77.0.61"}"#, &h2]).0, 200);
    assert_eq!(dora.offers_to(&discover), vec!["10.77.0.61".parse::<std::net::Ipv4Addr>().unwrap()]);
    assert_eq!(fast(&agent), before + 2, "the changed host was not answered by the kernel");

    // Every write is in the audit log, with who did it; only admin reads it.
    assert_eq!(s.curl(&["-H", &auth(&writer), &format!("{BASE}/api/v1/audit")]).0, 403);
    let (code, audit) = s.curl(&["-H", &auth(&admin), &format!("{BASE}/api/v1/audit")]);
    assert_eq!(code, 200);
    let audit = json(&audit);
    let actions: Vec<(String, String)> =
        audit.as_array().unwrap().iter().map(|a| (a["who"].as_str().unwrap().into(), a["action"].as_str().unwrap().into())).collect();
    for want in [
        ("ci".to_string(), format!("PUT /api/v1/hosts/{mac}")),
        ("node-token".to_string(), format!("POST /api/v1/nodes/{mac}/events")),
        ("ci".to_string(), "PATCH /api/v1/hosts/52:54:00:cc:00:60".to_string()),
    ] {
        assert!(actions.contains(&want), "{want:?} not audited: {actions:?}");
    }
    assert!(!actions.iter().any(|(who, _)| who == "grafana"), "a refused write was applied: {actions:?}");
}

/// The CLI over the control socket (no token): import all-or-nothing, list, intent, rm.
#[test]
fn hosts_cli_imports_all_or_nothing_and_sets_intents() {
    if !require_root("hosts_cli_imports_all_or_nothing_and_sets_intents") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("provcli");
    let _agent = s.start();
    let cli = |args: &[&str]| Command::new(bin("netboot-xdp")).args(args).args(["--iface", &s.lab.server_if]).output().unwrap();
    let bad = s.dir.join("bad.csv");
    std::fs::write(&bad, "mac,ip,hostname\n52:54:00:dd:00:01,10.77.0.101,a\n52:54:00:dd:00:02,10.77.0.9,b\n").unwrap();
    let out = cli(&["hosts", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success(), "an import with a taken address succeeded");
    assert!(String::from_utf8_lossy(&out.stderr).contains("10.77.0.9"), "{}", String::from_utf8_lossy(&out.stderr));
    let good = s.dir.join("good.jsonl");
    std::fs::write(&good, "{\"mac\":\"52:54:00:dd:00:01\",\"ip\":\"10.77.0.101\",\"hostname\":\"a\"}\n{\"mac\":\"52:54:00:dd:00:02\",\"ip\":\"10.77.0.102\"}\n").unwrap();
    let list = || -> serde_json::Value {
        let out = cli(&["hosts", "list", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(list().as_array().unwrap().len(), 1, "the failed import left hosts behind");
    assert!(cli(&["hosts", "import", good.to_str().unwrap()]).status.success());
    assert_eq!(list().as_array().unwrap().len(), 3);
    assert!(cli(&["node", "52:54:00:dd:00:02", "intent", "rescue"]).status.success());
    assert!(cli(&["node", "52:54:00:cc:00:01", "intent", "install"]).status.success(), "a config host's intent");
    let l = list();
    let by = |m: &str| l.as_array().unwrap().iter().find(|h| h["mac"] == m).unwrap().clone();
    assert_eq!(by("52:54:00:dd:00:02")["intent"], "rescue");
    assert_eq!((by("52:54:00:cc:00:01")["intent"].clone(), by("52:54:00:cc:00:01")["source"].clone()), ("install".into(), "config".into()));
    assert!(cli(&["hosts", "rm", "52:54:00:dd:00:01"]).status.success());
    assert!(!cli(&["hosts", "rm", "52:54:00:cc:00:01"]).status.success(), "a config host removed");
    assert_eq!(list().as_array().unwrap().len(), 2);
}

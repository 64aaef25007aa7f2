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
             [[dhcp.host]]\nmac = \"52:54:00:cc:00:01\"\nip = \"10.77.0.9\"\nhostname = \"seed-001\"\nip6 = \"fd00:77::9\"\n\
             [dhcp6]\nprefix = \"fd00:77::/64\"\n\
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
    // The phone-home token goes to the node alone: another host of the segment asking for
    // the node's script gets it without one, so it cannot report the node's install.
    let other = s.lab.add_segment("other", 'o', Some("10.77.3.2/16".parse().unwrap())).unwrap();
    let out = other.ns.command("curl").args(["-s", "--max-time", "10", &format!("{BASE}/boot.ipxe?mac={mac}")]).output().unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("intent=install host=node-050") && !script.contains("token="), "{script}");
    // From the address it leased, it has.
    let st = s.lab.client.command("ip").args(["addr", "add", "10.77.0.50/16", "dev", &s.lab.client_if]).status().unwrap();
    assert!(st.success());
    let node_curl = |args: &[&str]| s.curl(&[&["--interface", "10.77.0.50"], args].concat());
    let (code, script) = node_curl(&[&format!("{BASE}/boot.ipxe?mac={mac}")]);
    let script = String::from_utf8(script).unwrap();
    assert_eq!(code, 200);
    assert!(script.contains("intent=install host=node-050"), "{script}");
    let phone_home = script.split("phone_home=").nth(1).unwrap().lines().next().unwrap().to_string();
    assert!(phone_home.starts_with(&format!("{BASE}/api/v1/nodes/{mac}/events?token=")), "{phone_home}");
    // The script fetched again (a retried boot) keeps the URL the installer may already have.
    let (_, again) = node_curl(&[&format!("{BASE}/boot.ipxe?mac={mac}")]);
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

/// Profiles of the second test: the discover profile for unknown machines, a selector on a
/// host variable, a catch-all with its own local boot.
const PROFILES: &str = "\
[[profile]]\nname = \"discover\"\nscript = \"discover.ipxe.j2\"\n\
[[profile]]\nname = \"debian\"\nscript = \"debian.ipxe.j2\"\nvars = { release = \"trixie\", disk = \"vda\" }\nselector = { vars = { os = \"debian\" } }\n\
[[profile]]\nname = \"generic\"\nlocal_boot = \"exit 1\"\n";

/// An unknown machine (udhcpc with a vendor class and a machine UUID) is discovered with what
/// it said, boots the discover profile, is adopted by PUT and boots the profile its variables
/// select (`explain` says why); with `unknown = "ignore"` an unknown machine gets nothing, not
/// even from the kernel's cache, and is still listed. The OpenAPI document lists every
/// normative route and every operation it lists is served; the dashboard, rendered by headless
/// Chromium, shows the API's numbers.
#[test]
fn unknown_machines_are_discovered_adopted_and_boot_their_profile() {
    if !require_root("unknown_machines_are_discovered_adopted_and_boot_their_profile") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("provdisc");
    let base = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("{base}{PROFILES}")).unwrap();
    for (name, body) in [
        ("discover.ipxe.j2", "#!ipxe\necho discover profile={{ profile }} mac={{ mac }}\n"),
        ("debian.ipxe.j2", "#!ipxe\necho debian {{ vars.release }} on {{ vars.disk }} host={{ hostname }} profile={{ profile }}\n"),
    ] {
        std::fs::write(s.dir.join("http").join(name), body).unwrap();
    }
    let (writer, reader, admin) = (token(&s, "ci", "write"), token(&s, "dash", "read"), token(&s, "boss", "admin"));
    let agent = s.start();
    let get = |t: &str, path: &str| {
        let (code, body) = s.curl(&["-H", &auth(t), &format!("{BASE}{path}")]);
        assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
        json(&body)
    };

    // Discovered, with what it said: option 60 and option 97 (UUID fields little-endian).
    let mac = "52:54:00:ee:00:07";
    s.set_client_mac(mac);
    let lease = s.udhcpc("unknown", &["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x61:0000112233445566778899aabbccddeeff"]);
    assert!(lease["ip"].starts_with("10.77.1."), "a pool address: {lease:?}");
    let seen = get(&reader, "/api/v1/discovered");
    let me = seen.as_array().unwrap().iter().find(|d| d["mac"] == mac).unwrap_or_else(|| panic!("{mac} not discovered: {seen}"));
    assert_eq!(me["vendor_class"], "PXEClient:Arch:00007:UNDI:003016");
    assert_eq!(me["uuid"], "33221100-5544-7766-8899-aabbccddeeff");
    assert_eq!(me["known"], false);
    let script = |m: &str| String::from_utf8(s.curl(&[&format!("{BASE}/boot.ipxe?mac={m}")]).1).unwrap();
    assert!(script(mac).contains("discover profile=discover"), "{}", script(mac));
    assert_eq!(get(&reader, &format!("/api/v1/nodes/{mac}/explain"))["by"], "discover");

    // Adopted: no longer discovered; its variables select the debian profile.
    let doc = r#"{"ip":"10.77.0.70","hostname":"node-070","vars":{"os":"debian","disk":"nvme0n1"}}"#;
    let put = s.curl(&["-X", "PUT", "-H", &auth(&writer), "-d", doc, &format!("{BASE}/api/v1/hosts/{mac}")]);
    assert_eq!(put.0, 201, "{}", String::from_utf8_lossy(&put.1));
    assert!(!get(&reader, "/api/v1/discovered").as_array().unwrap().iter().any(|d| d["mac"] == mac), "an adopted machine still discovered");
    assert_eq!(script(mac).trim_end(), "#!ipxe\necho debian trixie on nvme0n1 host=node-070 profile=debian", "host vars override the profile's");
    let why = get(&reader, &format!("/api/v1/nodes/{mac}/explain"));
    assert_eq!((why["profile"].as_str(), why["by"].as_str()), (Some("debian"), Some("selector")), "{why}");
    assert_eq!(why["variables"]["vars"]["release"], "trixie");
    assert!(why["reason"].as_str().unwrap().contains("os=debian"), "{why}");
    // A profile no [[profile]] defines is refused; a host naming one gets it, and its local boot.
    let bad = s.curl(&["-X", "PATCH", "-H", &auth(&writer), "-d", r#"{"profile":"windows"}"#, &format!("{BASE}/api/v1/hosts/{mac}")]);
    assert_eq!(bad.0, 422, "{}", String::from_utf8_lossy(&bad.1));
    let patch = s.curl(&["-X", "PATCH", "-H", &auth(&writer), "-d", r#"{"profile":"generic","intent":"local"}"#, &format!("{BASE}/api/v1/hosts/{mac}")]);
    assert_eq!(patch.0, 200, "{}", String::from_utf8_lossy(&patch.1));
    assert!(script(mac).ends_with("\nexit 1\n"), "the profile's local boot: {}", script(mac));
    // A DHCPv6 address (issue 16): inside the prefix, and nobody else's.
    let patch6 = |ip6: &str| s.curl(&["-X", "PATCH", "-H", &auth(&writer), "-d", &format!(r#"{{"ip6":"{ip6}"}}"#), &format!("{BASE}/api/v1/hosts/{mac}")]);
    let outside = patch6("2001:db8::70");
    assert_eq!(outside.0, 422, "{}", String::from_utf8_lossy(&outside.1));
    let taken = patch6("fd00:77::9");
    assert_eq!(taken.0, 409, "the seed host's: {}", String::from_utf8_lossy(&taken.1));
    assert_eq!(patch6("fd00:77::70").0, 200);
    assert_eq!(get(&reader, &format!("/api/v1/hosts/{mac}"))["ip6"], "fd00:77::70");

    // A PXE machine bound from the pool (cached in the kernel), then `unknown = "ignore"`: it
    // and any new unknown machine get nothing; a host still does; both are listed.
    let dora = Dora::open(&s.lab);
    let pooled = [0x52, 0x54, 0, 0xee, 0, 0x08];
    assert!(dora.bind(pooled, "10.77.0.1".parse().unwrap()).is_some(), "no pool lease");
    let text = std::fs::read_to_string(&s.config).unwrap().replace("[dhcp]\n", "[dhcp]\nunknown = \"ignore\"\n");
    std::fs::write(&s.config, text).unwrap();
    let ignored = || agent.status().unwrap()["agent"]["dhcp_silent_unknown_client"].as_u64().unwrap_or(0);
    let fresh = [0x52, 0x54, 0, 0xee, 0, 0x09];
    assert!(tests::eventually(10, || dora.offers(fresh).is_empty() && ignored() > 0), "an unknown machine answered with unknown = ignore");
    assert!(dora.offers(pooled).is_empty(), "the kernel's cache still answers an unknown machine");
    assert_eq!(dora.offers([0x52, 0x54, 0, 0xcc, 0, 0x01]).len(), 1, "the config's host is no longer answered");
    let seen = get(&reader, "/api/v1/discovered");
    for m in ["52:54:00:ee:00:08", "52:54:00:ee:00:09"] {
        assert!(seen.as_array().unwrap().iter().any(|d| d["mac"] == m), "{m} not listed: {seen}");
    }

    openapi_lists_and_serves_every_route(&s, &admin);
    dashboard_shows_the_apis_numbers(&s, &reader);
}

/// Every normative `/api/v1` route (DESIGN.md §9) is in the document, and every operation the
/// document lists is routed (not the "no such API route" answer, not 405).
fn openapi_lists_and_serves_every_route(s: &Setup, admin: &str) {
    let (code, body) = s.curl(&["-H", &auth(admin), &format!("{BASE}/api/v1/openapi.json")]);
    assert_eq!(code, 200);
    let doc = json(&body);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/hosts", "get"),
        ("/api/v1/hosts/{mac}", "get"),
        ("/api/v1/hosts/{mac}", "put"),
        ("/api/v1/hosts/{mac}", "patch"),
        ("/api/v1/hosts/{mac}", "delete"),
        ("/api/v1/hosts:import", "post"),
        ("/api/v1/nodes/{mac}/events", "post"),
        ("/api/v1/nodes/{mac}/explain", "get"),
        ("/api/v1/discovered", "get"),
        ("/api/v1/audit", "get"),
        ("/api/v1/openapi.json", "get"),
    ] {
        assert!(paths.get(path).is_some_and(|p| p.get(method).is_some()), "{method} {path} not in openapi.json");
    }
    for (path, ops) in paths {
        for (method, _) in ops.as_object().unwrap() {
            // A MAC no host has: the handlers answer, with 404 or 422 at worst.
            let url = format!("{BASE}{}", path.replace("{mac}", "52:54:00:ff:ff:fe"));
            let (code, body) = s.curl(&["-X", &method.to_uppercase(), "-H", &auth(admin), "-d", "{}", &url]);
            let body = String::from_utf8_lossy(&body);
            assert!(code != 405 && !body.contains("no such API route") && code != 0, "{method} {path}: {code} {body}");
        }
    }
    let (code, body) = s.curl(&["-H", &auth(admin), &format!("{BASE}/api/v1/no-such-thing")]);
    assert!(code == 404 && String::from_utf8_lossy(&body).contains("no such API route"));
    // Every JSON answer of a read, for a node that has a host, a timeline, events and an
    // explanation, is what the document describes: no field it does not show, none missing.
    let mut checked = 0;
    for (path, ops) in paths {
        let Some(schema) = ops.get("get").and_then(|g| g["responses"]["200"]["content"]["application/json"].get("schema")) else { continue };
        let url = format!("{BASE}{}", path.replace("{mac}", "52:54:00:ee:00:07"));
        let (code, body) = s.curl(&["-H", &auth(admin), &url]);
        assert_eq!(code, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
        let answer = json(&body);
        if let Err(e) = tests::openapi::conforms(&doc, schema, &answer, path) {
            panic!("GET {path} answers what openapi.json does not describe: {e}");
        }
        checked += 1;
    }
    assert!(checked >= 10, "{checked} reads checked against their schemas");
}

/// Headless Chromium renders `/` with a read token: its numbers are the API's, and a
/// screenshot is kept in target/test-artifacts/dashboard.png.
fn dashboard_shows_the_apis_numbers(s: &Setup, reader: &str) {
    let profile = s.dir.join("chromium");
    let chromium = |args: &[&str]| {
        let out = s
            .lab
            .client
            .command("timeout")
            .args(["-s", "KILL", "90", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--virtual-time-budget=10000"])
            .args(args)
            .arg(format!("{BASE}/?refresh=0#token={reader}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = chromium(&["--dump-dom"]);
    assert!(dom.contains("data-loaded=\"1\""), "the page did not load its data:\n{dom}");
    let shown = |id: &str| -> u64 {
        let at = dom.find(&format!("id=\"{id}\">")).unwrap_or_else(|| panic!("no #{id} in the page")) + id.len() + 6;
        dom[at..].split('<').next().unwrap().trim().parse().unwrap_or_else(|_| panic!("#{id} is not a number"))
    };
    let (_, nodes) = s.curl(&["-H", &auth(reader), &format!("{BASE}/api/v1/nodes")]);
    let nodes = json(&nodes);
    let nodes = nodes.as_array().unwrap();
    assert!(!nodes.is_empty());
    assert_eq!(shown("count-total"), nodes.len() as u64);
    for stage in ["dhcp", "tftp", "ipxe_dhcp", "script", "file", "event"] {
        let stages: Vec<_> = nodes.iter().map(|n| (n["mac"].clone(), n["stage"].clone())).collect();
        assert_eq!(shown(&format!("count-{stage}")), nodes.iter().filter(|n| n["stage"] == stage).count() as u64, "stage {stage}: {stages:?}\n{dom}");
    }
    let (_, seen) = s.curl(&["-H", &auth(reader), &format!("{BASE}/api/v1/discovered")]);
    assert_eq!(shown("count-discovered"), json(&seen).as_array().unwrap().len() as u64);
    assert!(dom.contains("52:54:00:ee:00:09"), "a discovered machine is not in the table");
    assert!(dom.contains("data-stage=\"dhcp\""), "no progress curve");

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1200,1100", "--hide-scrollbars"]);
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "no screenshot at {}", shot.display());
}

/// `[api] tls_cert`, `tls_key`, `client_ca`: the API over TLS with client certificates on
/// `http.listen`'s port, boot routes still plain HTTP there, a token over plain HTTP refused,
/// and a half TLS config refused with its position.
#[test]
fn the_api_speaks_tls_with_client_certificates_beside_plain_boot_http() {
    if !require_root("the_api_speaks_tls_with_client_certificates_beside_plain_boot_http") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("provtls");
    netboot_lab::pki::Pki::make(&s.dir, "10.77.0.1", "api").unwrap();
    let base = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("{base}tls_cert = \"server.pem\"\n")).unwrap();
    let check = Command::new(bin("netboot-xdp")).args(["check", "-c"]).arg(&s.config).output().unwrap();
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success() && err.contains("netboot.toml:") && err.contains("tls_cert needs tls_key"), "{err}");
    std::fs::write(&s.config, format!("{base}tls_cert = \"server.pem\"\ntls_key = \"server.key\"\nclient_ca = \"ca.pem\"\n")).unwrap();
    let reader = token(&s, "dash", "read");
    let agent = s.start();
    let d = |f: &str| s.dir.join(f).display().to_string();
    let (ca, cert, key) = (d("ca.pem"), d("client.pem"), d("client.key"));
    let https = "https://10.77.0.1:8080/api/v1/hosts";

    let (code, body) = s.curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, "-H", &auth(&reader), https]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert!(json(&body).as_array().is_some());
    // No client certificate: no TLS session at all; a certificate is not a token.
    assert_eq!(s.curl(&["--cacert", &ca, "-H", &auth(&reader), https]).0, 0);
    assert_eq!(s.curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, https]).0, 401);
    // Plain HTTP on the same port: boot routes as before, tokens refused.
    assert_eq!(s.curl(&[&format!("{BASE}/boot.ipxe?mac=52:54:00:cc:00:01")]).0, 200);
    let (code, body) = s.curl(&["-H", &auth(&reader), &format!("{BASE}/api/v1/hosts")]);
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("TLS only"));
    let agent_stats = agent.status().unwrap()["agent"].clone();
    assert!(agent_stats["http_tls_connections"].as_u64().unwrap_or(0) >= 2, "{agent_stats}");
    assert!(agent_stats["http_tls_handshake_failed"].as_u64().unwrap_or(0) >= 1, "{agent_stats}");
}

//! The bench's AF_XDP load generators on small runs: the DHCP generator gets every client
//! leased by each server (and the second run answered by the kernel), the TFTP client fetches
//! every file byte-exact from the AF_XDP engine and a peer. Their figures are only worth
//! something if these hold.

use tests::{bench_json as bench, require_root};

#[test]
fn the_dhcp_generator_leases_every_client_and_the_second_run_is_the_kernels() {
    if !require_root("the_dhcp_generator_leases_every_client_and_the_second_run_is_the_kernels") {
        return;
    }
    let _serial = tests::serial();
    let v = bench(&["dhcp-rate", "--clients", "500", "--window", "64", "--peers", "kea", "--deadline", "30"], "dhcp");
    assert_eq!((v["kernel_offers"].as_u64(), v["kernel_acks"].as_u64()), (Some(500), Some(500)), "{v:#}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{v:#}");
    for r in runs {
        assert_eq!((r["leased"].as_u64(), r["distinct_addresses"].as_u64()), (Some(500), Some(500)), "{r:#}");
    }
    assert!(v["xdp_ns_per_reply"].as_u64().unwrap() > 0);
}

#[test]
fn the_afxdp_tftp_client_fetches_every_file_byte_exact() {
    if !require_root("the_afxdp_tftp_client_fetches_every_file_byte_exact") {
        return;
    }
    let _serial = tests::serial();
    let v = bench(&["tftp-rate", "--servers", "netboot-xdp-afxdp,dnsmasq", "--transfers", "1,40"], "tftp");
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2 * 3 * 2, "{v:#}");
    for r in rows {
        assert_eq!(r["failed"].as_u64(), Some(0), "{r:#}");
        assert_eq!(r["client"], "xsk");
        assert!(r["mib_per_s"].as_f64().unwrap() > 0.0);
    }
}

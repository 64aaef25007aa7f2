//! The Secure Boot chain's per-node config. Debian's signed network GRUB
//! (`grubnetx64.efi.signed`, served as `grubx64.efi` beside the shim) has its prefix at `/grub`
//! and no HTTP client: it reads `/grub/grub.cfg` over TFTP from the server it came from. That
//! name is rendered for the node that asks (known by its address, as its DHCP ACK recorded it)
//! from the `grub` template of its profile, with the variables its iPXE script would get.

use crate::http::{self, HttpState};
use crate::timeline::Milestone;
use crate::tftp::session::Generated;
use std::net::IpAddr;
use std::sync::Arc;

/// The name the signed GRUB asks for (its built-in prefix is `/grub`).
pub const CONFIG_NAME: &str = "grub/grub.cfg";

pub struct GrubConfigs(pub Arc<HttpState>);

impl Generated for GrubConfigs {
    fn generate(&self, name: &str, client: IpAddr) -> Option<Vec<u8>> {
        if name.trim_start_matches('/') != CONFIG_NAME {
            return None;
        }
        let st = &self.0;
        let mac = st.timelines.mac_of(client)?;
        let view = st.view();
        let leased = match client {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        };
        let plan = http::plan(st, &view, Some(mac), leased);
        // A node whose profile has no GRUB template gets the root's file, if there is one.
        let template = plan.grub.clone()?;
        st.stats.bump("grub_configs");
        let intent = st.provision.as_ref().and_then(|p| p.intent(mac)).map(|i| i.intent);
        let hostname = view.hosts.get(&mac).and_then(|h| h.hostname.clone());
        let ctx = http::script::template_context(st, &plan, hostname, &Default::default(), intent, None);
        let known = plan.facts.known || plan.facts.ip.is_some();
        match http::script::render(&view, &template, ctx) {
            Ok(text) => {
                st.timelines.record(mac, Milestone::Script { status: 200, known });
                Some(text.into_bytes())
            }
            Err(msg) => {
                st.stats.bump("http_template_errors");
                st.timelines.record(mac, Milestone::Script { status: 500, known });
                tracing::warn!(%mac, "GRUB config: {}", msg.trim_end());
                None
            }
        }
    }
}

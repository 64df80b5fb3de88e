//! `deployer pause NAME` and `resume NAME`: a service behind the proxy
//! answers 503 with a maintenance page while it is down on purpose, on
//! every host of the service; `resume` (or the next deploy) sends its
//! public port to the current release again.

use super::lifecycle::OnHost;
use super::{Engine, steps};
use crate::hosting::site::Site;
use crate::model::ProxySpec;
use crate::support::error::{Failure, FailureKind};

impl Engine {
    /// Puts up the maintenance page on each of the service's hosts.
    pub async fn pause(&self, service: &str, message: Option<&str>) -> Result<String, Failure> {
        let message =
            message.unwrap_or("This service is down for maintenance; it will be back soon.");
        self.host_by_host(service, OnHost::Pause(message)).await
    }

    /// Sends the public port to the current release again.
    pub async fn resume(&self, service: &str) -> Result<String, Failure> {
        self.host_by_host(service, OnHost::Resume).await
    }

    /// Writes a service's file in its host's proxy from the current
    /// release: the maintenance page, or the release's upstream.
    pub(super) async fn rewrite(
        &self,
        site: &Site,
        service: &str,
        content: &impl Fn(&str, &ProxySpec, u16) -> String,
    ) -> Result<String, Failure> {
        let (_, current, ctx) = self.current_release(site, service).await?;
        let Some(proxy) = &ctx.spec.proxy else {
            return Err(Failure::invalid(format!(
                "'{service}' is not behind the proxy: pausing needs [proxy] port in its \
                 service.toml (or --proxy-port), deployed"
            )));
        };
        let text = content(service, proxy, ctx.spec.port);
        // One after the other: a proxy that will not start gets no
        // certificate and no file.
        let written = async {
            steps::proxy::ensure(site).await?;
            steps::proxy::ensure_tls(site, proxy).await?;
            steps::proxy::write_site(site, service, &text).await
        };
        written
            .await
            .map_err(|e| Failure::new(FailureKind::Start, format!("proxy: {e}")))?;
        Ok(if crate::hosting::proxy::is_paused(&text) {
            format!("port {} answers 503 (maintenance)", proxy.public_port)
        } else {
            format!(
                "port {} sends to release {current} again",
                proxy.public_port
            )
        })
    }
}

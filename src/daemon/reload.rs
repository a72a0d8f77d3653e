//! SIGHUP: read the configuration again and apply what can change live, as
//! `config::reload` plans it. A configuration that fails to load or validate changes
//! nothing.

use std::sync::Arc;

use tracing::{error, info, warn};

use super::Daemon;
use crate::config::{self, reload};
use crate::settings::Settings;
use crate::systemd;

impl Daemon {
    /// Reloads, reports the outcome in the log, the metrics and `STATUS=` (with READY=1).
    pub(super) fn reload(&mut self) {
        systemd::reloading();
        info!("reloading configuration from {}", self.path.path.display());
        let result = config::load(&self.path).and_then(|loaded| {
            let plan = reload::plan(&self.config, loaded.config);
            let settings = Settings::new(&plan.config)?;
            Ok((plan, settings))
        });
        let note = match result {
            Ok((plan, settings)) => {
                for c in &plan.changed {
                    info!("{}: {} -> {}", c.key, c.before, c.after);
                }
                if !plan.needs_restart.is_empty() {
                    warn!(
                        "changed but needs a restart to take effect: {}",
                        plan.needs_restart.join(", ")
                    );
                }
                if let Err(e) = self.log.set_level(&plan.config.log.level) {
                    warn!(error = %e, "cannot apply log.level");
                }
                self.shared.settings.store(Arc::new(settings));
                self.shared.metrics.reload(true);
                self.config = plan.config;
                self.publish_limits();
                info!("configuration reloaded");
                if plan.needs_restart.is_empty() {
                    "last reload OK".to_string()
                } else {
                    format!(
                        "last reload OK; restart needed for {}",
                        plan.needs_restart.join(", ")
                    )
                }
            }
            Err(e) => {
                error!("reload failed, keeping the running configuration: {e}");
                self.shared.metrics.reload(false);
                format!("last reload FAILED ({e}); running on the previous configuration")
            }
        };
        self.status.set_note(note);
        systemd::ready(&self.status.line(&self.shared, 0));
    }
}

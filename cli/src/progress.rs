//! Progress bars for long operations, shown only when stderr is a terminal (quiet in
//! pipes and logs).

use std::io::IsTerminal;
use std::path::Path;

use arca_store_sqlite::{AddProgress, GcProgress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar of one `store add-path` argument: bytes hashed, then bytes copied of the total.
pub struct AddBar {
    bar: Option<ProgressBar>,
}

impl AddBar {
    pub fn new(source: &Path) -> AddBar {
        if !std::io::stderr().is_terminal() {
            return AddBar { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(format!("hashing '{}'", source.display()));
        AddBar { bar: Some(bar) }
    }

    pub fn update(&self, progress: AddProgress) {
        let Some(bar) = &self.bar else { return };
        match progress {
            AddProgress::Hashing { bytes } => bar.set_position(bytes),
            AddProgress::Copying { bytes, total } => {
                if bar.length() != Some(total) {
                    bar.set_length(total);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.set_message("copying into the store");
                }
                bar.set_position(bytes);
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The bar of a garbage collection: paths deleted of the dead ones, bytes freed.
pub struct GcBar {
    bar: Option<ProgressBar>,
}

impl GcBar {
    pub fn new() -> GcBar {
        if !std::io::stderr().is_terminal() {
            return GcBar { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        GcBar { bar: Some(bar) }
    }

    pub fn update(&self, progress: GcProgress) {
        let Some(bar) = &self.bar else { return };
        match progress {
            GcProgress::FindingRoots => bar.set_message("finding garbage collector roots..."),
            GcProgress::Deleting {
                deleted,
                dead,
                bytes_freed,
            } => {
                if bar.length() != Some(dead) {
                    bar.set_length(dead);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "deleting garbage [{bar:30}] {pos}/{len} paths, {msg} ({eta})",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                }
                bar.set_position(deleted);
                bar.set_message(format!("{} freed", indicatif::HumanBytes(bytes_freed)));
            }
            GcProgress::PruningLinks => {
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message("deleting unused links...");
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

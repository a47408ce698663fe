//! `arca store optimise` (== `nix-store --optimise`): identical files of the store
//! replaced by hard links, with Nix's summary line on stderr.

use std::io::{IsTerminal, Write};

use arca_store_core::{OptimiseProgress, OptimiseReport, StoreOps};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

#[derive(clap::Args)]
pub struct OptimiseArgs {
    /// Also print the counts as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn optimise<S: StoreOps>(args: &OptimiseArgs, store: &S) -> anyhow::Result<()> {
    let bar = PathsBar::new();
    let report = store.optimise(&|p| bar.update(p));
    bar.finish();
    // A daemon does not say what it did.
    let Some(report) = report? else {
        return Ok(());
    };
    // Nix's wording and rounding, so that scripts reading either keep working.
    eprintln!("{}", summary(&report));
    if args.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(
            &mut out,
            &json!({
                "paths": report.paths,
                "filesScanned": report.files_scanned,
                "filesHashed": report.files_hashed,
                "filesLinked": report.files_linked,
                "bytesSaved": report.bytes_saved,
                "filesDiffering": report.files_differing,
            }),
        )?;
        writeln!(out)?;
    }
    Ok(())
}

/// `X.XX MiB freed by hard-linking N files`, as Nix 2.8 prints it.
fn summary(report: &OptimiseReport) -> String {
    format!(
        "{:.2} MiB freed by hard-linking {} files",
        report.bytes_saved as f64 / (1024.0 * 1024.0),
        report.files_linked
    )
}

/// Paths optimised of the total, only when stderr is a terminal.
struct PathsBar {
    bar: Option<ProgressBar>,
}

impl PathsBar {
    fn new() -> PathsBar {
        if !std::io::stderr().is_terminal() {
            return PathsBar { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} paths ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message("optimising");
        PathsBar { bar: Some(bar) }
    }

    fn update(&self, progress: OptimiseProgress) {
        let Some(bar) = &self.bar else { return };
        let OptimiseProgress::Path { done, total } = progress;
        bar.set_length(total);
        bar.set_position(done);
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_nix_s_line() {
        let report = OptimiseReport {
            files_linked: 12,
            bytes_saved: 10040,
            ..OptimiseReport::default()
        };
        // What Nix 2.8 printed for the same store.
        assert_eq!(summary(&report), "0.01 MiB freed by hard-linking 12 files");
    }
}

//! `reprise analyze|compare|export`: launches the separate `reprise-analyze` binary.
//!
//! The analyzer links polars, whose release build takes ~40 minutes on a 2-core machine
//! against ~9 for `reprise`; keeping it a separate binary keeps `reprise` quick to build.
//! Like cargo and git subcommands, it is found beside this binary or on PATH
//! (`REPRISE_ANALYZE` names it explicitly).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

/// Arguments passed through to `reprise-analyze` unchanged.
#[derive(Debug, clap::Args)]
pub struct Passthrough {
    /// Arguments for reprise-analyze (see `reprise-analyze --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

/// The binary's file name.
pub const ANALYZER: &str = "reprise-analyze";

/// The command that builds and installs the analyzer from a checkout.
pub const BUILD_HINT: &str = "cargo install --locked --path crates/reprise-analyze";

/// Environment variable naming the analyzer binary to use.
pub const ANALYZER_ENV: &str = "REPRISE_ANALYZE";

/// Finds the analyzer: `$REPRISE_ANALYZE` when set, else beside the running binary, else
/// on PATH.
pub fn find_analyzer() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ANALYZER_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let exe_name = format!("{ANALYZER}{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(&exe_name)));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(&exe_name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// Runs `reprise-analyze <sub> <args...>` and returns its exit status.
pub fn run(sub: &str, args: Passthrough) -> Result<ExitCode> {
    let Some(analyzer) = find_analyzer() else {
        bail!(
            "`reprise {sub}` needs {ANALYZER} (the polars analyzer, a separate binary), which was \
             not found ({ANALYZER_ENV}, beside this binary, PATH); build it with: {BUILD_HINT}"
        );
    };
    let status = Command::new(&analyzer)
        .arg(sub)
        .args(&args.args)
        .status()
        .with_context(|| format!("running {}", analyzer.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

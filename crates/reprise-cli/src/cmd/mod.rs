//! One module per subcommand: argument parsing and a call into library code.

pub mod analyze;
pub mod common;
pub mod coordinate;
pub mod import;
pub mod merge;
pub mod monitor;
pub mod record;
pub mod replay;
pub mod sim;
pub mod synth;
pub mod trace;
pub mod tui;

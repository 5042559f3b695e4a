//! End-to-end tests: drive the real `reprise` binary on real data (the shipped sample trace,
//! the public traces in `tests/data`, and small fixtures).

mod support;

mod cli;
mod contract;
mod import_inspect;
mod llama_server;
mod monitor;
mod record;
mod replay;
mod sim;
mod synth;

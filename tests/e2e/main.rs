//! End-to-end tests: drive the real `reprise` binary on real data (the shipped sample trace,
//! the public traces in `tests/data`, and small fixtures), and the libraries across crate
//! boundaries (a replay against the simulator analysed by the analyzer's library). Tests of
//! one crate alone live beside it; every test that crosses crates lives here.

mod support;

mod cache_sim;
mod capacity;
mod chaos;
mod cli;
mod contract;
mod distributed;
mod full_disk;
mod fuzz_seeds;
mod import_inspect;
mod knee_sim;
mod live;
mod llama_server;
mod monitor;
mod monitor_sim;
mod record;
mod record_sim;
mod replay;
mod sessions;
mod sim;
mod synth;
mod torture;
mod tui;

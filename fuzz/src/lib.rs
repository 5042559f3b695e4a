//! The fuzz targets' bodies ([`targets`]), shared by the cargo-fuzz binaries and the
//! workspace test that replays the seed corpus.

pub mod targets;

//! What the replayer's benches share: the no-op streaming server they measure against, in
//! a child process (the bench's own executable with `--serve`) pinned to CPU 1 where
//! `taskset` exists, so that the server has a core of its own.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// Starts the server; returns it, its `http://127.0.0.1:PORT` and whether it is pinned.
pub fn start_server() -> (Child, String, bool) {
    let exe = std::env::current_exe().expect("exe");
    let pinned = Command::new("taskset").arg("-V").output().is_ok();
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let mut child = cmd
        .arg("--serve")
        // The server ends when this pipe does (`serve_forever`): with this process.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    (child, format!("http://{}", line.trim()), pinned)
}

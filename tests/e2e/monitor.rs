//! `reprise monitor`: live sampling into a directory on a machine without a GPU and with a
//! dead endpoint (one line about NVML, the dead scrapes classed, files closed), and
//! `reprise monitor import` of an nvidia-smi log into gpu/1.

use reprise_trace::{DatasetReader, GpuSample, ServerSample};

use crate::support::{fails, ok, reprise, s};

#[test]
fn monitor_samples_the_host_and_marks_a_dead_endpoint_without_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/metrics", l.local_addr().unwrap())
    };
    let out = reprise(&[
        "monitor",
        "--out",
        s(dir.path()),
        "--gpu",
        "--scrape",
        &dead,
        "--interval-ms",
        "100",
        "--duration",
        "1",
    ]);
    let text = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("monitor.json")).unwrap())
            .unwrap();
    // This machine has no NVIDIA driver: said once, in one line, and sampling goes on.
    if summary["gpu_rows"] == 0 {
        assert_eq!(stderr.matches("NVML").count(), 1, "{stderr}");
        assert!(
            summary["nvml"]
                .as_str()
                .unwrap()
                .starts_with("NVML unavailable")
        );
    }
    assert!(summary["host_samples"].as_u64().unwrap() >= 5, "{summary}");
    let src = &summary["sources"][0];
    assert_eq!(src["ok"], 0);
    assert!(src["failed"].as_u64().unwrap() >= 5, "{src}");
    assert!(src["errors"]["connect"].as_u64().unwrap() >= 5);
    assert_eq!(src["gaps"].as_array().unwrap().len(), 1);
    assert!(
        stderr.contains(&format!("{dead}: 0 scrapes ok")),
        "{stderr}{text}"
    );
    let rows = DatasetReader::<ServerSample>::open(dir.path().join("server.parquet"))
        .unwrap()
        .read_all()
        .unwrap();
    let up: Vec<&ServerSample> = rows
        .iter()
        .filter(|r| r.metric == "reprise_scrape_up")
        .collect();
    assert!(
        up.len() >= 5
            && up
                .iter()
                .all(|r| r.value == 0.0 && r.labels.contains("connect"))
    );
    assert!(
        rows.iter()
            .any(|r| r.source == "host" && r.metric == "host_cpu_util_pct")
    );
}

#[test]
fn nvidia_smi_logs_import_into_gpu_rows_and_bad_ones_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("smi.csv");
    std::fs::write(
        &log,
        "timestamp, index, uuid, name, utilization.gpu [%], memory.used [MiB], memory.total [MiB]\n\
         2026/11/28 10:00:00.000, 0, GPU-a, NVIDIA H200, 91 %, 120000 MiB, 143771 MiB\n\
         2026/11/28 10:00:01.000, 0, GPU-a, NVIDIA H200, 93 %, 120100 MiB, 143771 MiB\n",
    )
    .unwrap();
    let out_dir = dir.path().join("run");
    ok(&reprise(&[
        "monitor",
        "import",
        "nvidia-smi",
        s(&log),
        "--host",
        "gpu-1",
        "--out",
        s(&out_dir),
    ]));
    let rows = DatasetReader::<GpuSample>::open(out_dir.join("gpu.parquet"))
        .unwrap()
        .read_all()
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[1].host.as_str(), rows[1].util_pct),
        ("gpu-1", Some(93.0))
    );
    assert_eq!(rows[0].mem_total_bytes, Some(143_771 << 20));
    std::fs::write(
        &log,
        "timestamp, utilization.gpu\n2026/11/28 10:00:00, 5\nnot a date, 6\n",
    )
    .unwrap();
    let err = fails(&reprise(&[
        "monitor",
        "import",
        "nvidia-smi",
        s(&log),
        "--out",
        s(&out_dir),
    ]));
    assert!(err.contains("smi.csv:3: bad timestamp"), "{err}");
}

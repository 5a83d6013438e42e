//! What every keyhole server's `/metrics` carries besides its own families:
//! `keyhole_build_info` and the standard process metrics, read from
//! `/proc/self` at scrape time (so nothing runs between scrapes).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The version in `keyhole_build_info`: the workspace's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit in `keyhole_build_info`: `KEYHOLE_COMMIT` at build time (the
/// Makefile exports it), `unknown` when it was unset.
pub const COMMIT: &str = match option_env!("KEYHOLE_COMMIT") {
    Some(c) if !c.is_empty() => c,
    _ => "unknown",
};

/// `/proc` counts CPU time in USER_HZ ticks, which the kernel fixes at 100 for
/// user space on every architecture keyhole runs on (Prometheus's procfs
/// reader assumes the same; reading `sysconf` would need `unsafe`).
const TICKS_PER_SECOND: f64 = 100.0;

/// Registers `keyhole_build_info` and the process metrics on the root of
/// `registry` (no prefix: these names are the same for every server).
pub fn register(registry: &mut Registry) {
    let start_time = Process::start_time();
    registry.register_collector(Box::new(Shared { start_time }));
}

#[derive(Debug)]
struct Shared {
    /// Read once: it does not change.
    start_time: Option<f64>,
}

impl Collector for Shared {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut info = encoder.encode_descriptor(
            "keyhole_build_info",
            "1, labelled with the version and commit keyhole was built from",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(info.encode_family(&[("version", VERSION), ("commit", COMMIT)])?)?;
        let p = Process::read();
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", p.resident_bytes),
            ("process_open_fds", "Number of open file descriptors", p.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors (the soft limit)", p.max_fds),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                ConstGauge::new(v as i64).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
            }
        }
        if let Some(cpu) = p.cpu_seconds {
            let help = "Total user and system CPU time spent in seconds";
            // The counter's `_total` suffix is the encoder's.
            let m = encoder.encode_descriptor("process_cpu_seconds", help, None, MetricType::Counter)?;
            ConstCounter::new(cpu).encode(m)?;
        }
        if let Some(start) = self.start_time {
            let help = "Start time of the process since the Unix epoch in seconds";
            let m = encoder.encode_descriptor("process_start_time_seconds", help, None, MetricType::Gauge)?;
            ConstGauge::new(start).encode(m)?;
        }
        Ok(())
    }
}

/// This process as `/proc/self` describes it; `None` where it cannot be read
/// (not Linux, no procfs): the metric is left out rather than made up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl Process {
    pub fn read() -> Process {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        Process {
            resident_bytes: read("/proc/self/status").as_deref().and_then(resident_bytes),
            cpu_seconds: read("/proc/self/stat").as_deref().and_then(stat).map(|s| s.cpu_seconds),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
            max_fds: read("/proc/self/limits").as_deref().and_then(max_fds),
        }
    }

    /// Boot time (`btime` of `/proc/stat`) plus the process's start in ticks after it.
    pub fn start_time() -> Option<f64> {
        let started = stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?.start_ticks;
        let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        Some(boot as f64 + started as f64 / TICKS_PER_SECOND)
    }
}

struct Stat {
    cpu_seconds: f64,
    start_ticks: u64,
}

/// `/proc/self/stat`: utime and stime (fields 14 and 15) and starttime (22).
/// The command name (field 2) may hold spaces and parentheses: fields are
/// counted after its closing one.
fn stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = field(14)? + field(15)?;
    Some(Stat { cpu_seconds: ticks as f64 / TICKS_PER_SECOND, start_ticks: field(22)? })
}

/// `VmRSS:  1234 kB` of `/proc/self/status`.
fn resident_bytes(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits`; `None` when unlimited.
fn max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// `btime` of `/proc/stat`: when the machine booted, in Unix seconds.
fn boot_time(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (keyhole (x) y) S 1 4242 4242 0 -1 4194560 2500 0 0 0 250 125 0 0 20 0 8 0 360000 \
                        12345678 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_is_read_after_the_command_name_whatever_it_holds() {
        let s = stat(STAT).unwrap();
        assert_eq!(s.cpu_seconds, 3.75, "250 + 125 ticks of 1/100 s");
        assert_eq!(s.start_ticks, 360_000);
        assert!(stat("4242 (truncated").is_none());
        assert!(stat("4242 (x) S 1").is_none());
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        let status = "Name:\tkeyhole\nVmPeak:\t  9000 kB\nVmRSS:\t   5120 kB\nThreads:\t8\n";
        assert_eq!(resident_bytes(status), Some(5120 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_fds(limits), Some(1024));
        assert_eq!(max_fds("Max open files            unlimited            unlimited            files\n"), None);
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read_from_proc() {
        let p = Process::read();
        assert!(p.resident_bytes.unwrap() > 1 << 20);
        assert!(p.open_fds.unwrap() >= 3);
        assert!(p.max_fds.unwrap() >= p.open_fds.unwrap());
        assert!(p.cpu_seconds.unwrap() >= 0.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = Process::start_time().unwrap();
        assert!(start <= now + 1.0 && start > now - 24.0 * 3600.0, "started at {start}, now {now}");
    }

    #[test]
    fn the_shared_families_encode_as_openmetrics_with_one_eof() {
        let mut root = Registry::default();
        register(&mut root);
        let sub = root.sub_registry_with_prefix("keyhole_test");
        sub.register("things", "Things", prometheus_client::metrics::counter::Counter::<u64>::default());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &root).unwrap();
        assert!(out.contains(&format!("keyhole_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\"}} 1\n")), "{out}");
        assert!(out.contains("keyhole_test_things_total 0\n"), "{out}");
        if cfg!(target_os = "linux") {
            for name in [
                "# TYPE process_cpu_seconds counter",
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_open_fds ",
                "process_max_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(out.contains(name), "{name:?} missing:\n{out}");
            }
        }
        assert_eq!(out.matches("# EOF").count(), 1);
        assert!(out.ends_with("# EOF\n"));
    }
}

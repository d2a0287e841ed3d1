//! What the processes under test cost during a measurement: CPU time (whole process and the
//! busiest thread) from /proc/<pid>/stat and /proc/<pid>/task/*/stat, peak RSS from VmHWM
//! (reset at the start of the window by writing 5 to /proc/<pid>/clear_refs) and from
//! sampling VmRSS, and the CPU used by everything else on the machine (/proc/stat).

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// USER_HZ: the unit of the CPU times in /proc; 100 on every Linux architecture we run on.
const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime in ticks from a stat line.
fn stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn process_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// tid → (name, ticks)
fn thread_ticks(pid: u32) -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else { continue };
        let name = fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim().to_string();
        if let Some(t) = stat_ticks(&stat) {
            out.insert(tid, (name, t));
        }
    }
    out
}

/// A `VmXxx:  1234 kB` field of /proc/<pid>/status, in bytes.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// (busy, total) ticks over all CPUs.
fn machine_ticks() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is included in user)
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU time of all threads in nanoseconds (/proc/<pid>/task/*/schedstat, first field).
fn process_run_ns(pid: u32) -> Option<u64> {
    let dir = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut sum = 0u64;
    for e in dir.flatten() {
        if let Ok(t) = fs::read_to_string(e.path().join("schedstat")) {
            sum += t.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Some(sum)
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[derive(Clone, Debug)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

pub fn parse_watch(s: &str) -> Result<Watched, String> {
    let (name, pid) = s.split_once('=').ok_or("expected NAME=PID")?;
    let pid = pid.parse().map_err(|_| format!("bad pid in {s}"))?;
    Ok(Watched { name: name.to_string(), pid })
}

/// tid → (thread name, CPU ticks)
type Threads = HashMap<u32, (String, u64)>;

struct Snapshot {
    procs: Vec<(Option<u64>, Threads)>,
    own: Option<u64>,
    machine: (u64, u64),
}

/// Started at the beginning of the measured window, finished at its end.
pub struct Window {
    watched: Vec<Watched>,
    before: Snapshot,
    hwm_reset: Vec<bool>,
    max_rss: Arc<Mutex<Vec<u64>>>,
    /// Per process: the most cores used over any 100 ms interval, and the seconds spent
    /// above 1.1 cores (several threads running at the same time).
    peak_cores: Arc<Mutex<Vec<(f64, f64)>>>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Serialize)]
pub struct ProcReport {
    pub name: String,
    pub pid: u32,
    /// CPU seconds per wall second during the window (1.0 = one core busy).
    pub cpu_cores: f64,
    /// The busiest single thread, CPU seconds per wall second.
    pub busiest_thread_cores: f64,
    pub busiest_thread: String,
    /// Threads that used more than 10 % of a core.
    pub threads_over_10pct: usize,
    /// CPU of the proxy's crypto pool (threads named `crypto-N`): the hashing, encryption
    /// and decryption moved off the connection's own thread.
    pub pool_cores: f64,
    /// Peak RSS during the window: VmHWM after a reset at its start (None when the reset
    /// was refused), and the largest VmRSS sampled every 20 ms.
    pub peak_rss_hwm: Option<u64>,
    pub peak_rss_sampled: u64,
    pub rss_end: Option<u64>,
    /// The most CPU the process used over any 100 ms interval (cores): above 1.0 means
    /// several threads were running at once.
    pub peak_cores_100ms: f64,
    /// Share of the window during which the process used more than 1.1 cores.
    pub share_above_one_core: f64,
}

#[derive(Debug, Serialize)]
pub struct WindowReport {
    pub procs: Vec<ProcReport>,
    /// The load generator itself.
    pub generator_cpu_cores: f64,
    /// All CPUs busy, minus the watched processes and the generator: other people's work.
    pub other_cpu_cores: f64,
    pub machine_cpu_cores: f64,
}

fn snapshot(watched: &[Watched]) -> Snapshot {
    Snapshot {
        procs: watched.iter().map(|w| (process_ticks(w.pid), thread_ticks(w.pid))).collect(),
        own: process_ticks(std::process::id()),
        machine: machine_ticks(),
    }
}

impl Window {
    pub fn start(watched: &[Watched]) -> Window {
        // Reset the peak RSS so VmHWM covers this window only.
        let hwm_reset = watched
            .iter()
            .map(|w| fs::write(format!("/proc/{}/clear_refs", w.pid), "5").is_ok())
            .collect();
        let max_rss = Arc::new(Mutex::new(
            watched.iter().map(|w| status_kb(w.pid, "VmRSS").unwrap_or(0)).collect::<Vec<_>>(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let peak_cores = Arc::new(Mutex::new(vec![(0.0, 0.0); watched.len()]));
        let sampler = {
            let pids = watched.iter().map(|w| w.pid).collect::<Vec<_>>();
            let (max_rss, peak_cores, stop) = (max_rss.clone(), peak_cores.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last: Option<(std::time::Instant, Vec<Option<u64>>)> = None;
                let mut tick = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let now: Vec<u64> = pids.iter().map(|p| status_kb(*p, "VmRSS").unwrap_or(0)).collect();
                    let mut m = max_rss.lock().unwrap();
                    for (m, n) in m.iter_mut().zip(now) {
                        *m = (*m).max(n);
                    }
                    drop(m);
                    if tick.is_multiple_of(5) {
                        let t = std::time::Instant::now();
                        let run: Vec<Option<u64>> = pids.iter().map(|p| process_run_ns(*p)).collect();
                        if let Some((t0, run0)) = &last {
                            let dt = t.duration_since(*t0).as_secs_f64();
                            let mut pc = peak_cores.lock().unwrap();
                            for (i, (a, b)) in run.iter().zip(run0).enumerate() {
                                if let (Some(a), Some(b)) = (a, b) {
                                    let cores = a.saturating_sub(*b) as f64 / 1e9 / dt.max(1e-6);
                                    pc[i].0 = f64::max(pc[i].0, cores);
                                    if cores > 1.1 {
                                        pc[i].1 += dt;
                                    }
                                }
                            }
                        }
                        last = Some((t, run));
                    }
                    tick += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Window {
            watched: watched.to_vec(),
            before: snapshot(watched),
            hwm_reset,
            max_rss,
            peak_cores,
            stop,
            sampler: Some(sampler),
        }
    }

    pub fn finish(mut self, wall: Duration) -> WindowReport {
        let after = snapshot(&self.watched);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.sampler.take() {
            let _ = h.join();
        }
        let secs = wall.as_secs_f64().max(1e-9);
        let cores = |ticks: u64| ticks as f64 / TICKS_PER_SEC / secs;
        let max_rss = self.max_rss.lock().unwrap().clone();
        let peak_cores = self.peak_cores.lock().unwrap().clone();
        let mut watched_ticks = 0u64;
        let mut procs = Vec::new();
        for (i, w) in self.watched.iter().enumerate() {
            let (b, bt) = &self.before.procs[i];
            let (a, at) = &after.procs[i];
            let d = a.unwrap_or(0).saturating_sub(b.unwrap_or(0));
            watched_ticks += d;
            let mut per_thread: Vec<(String, u64)> = at
                .iter()
                .map(|(tid, (name, t))| (name.clone(), t.saturating_sub(bt.get(tid).map(|x| x.1).unwrap_or(0))))
                .collect();
            per_thread.sort_by_key(|x| std::cmp::Reverse(x.1));
            let busiest = per_thread.first().cloned().unwrap_or_default();
            procs.push(ProcReport {
                name: w.name.clone(),
                pid: w.pid,
                cpu_cores: cores(d),
                busiest_thread_cores: cores(busiest.1),
                busiest_thread: busiest.0,
                threads_over_10pct: per_thread.iter().filter(|x| cores(x.1) > 0.10).count(),
                pool_cores: cores(per_thread.iter().filter(|x| x.0.starts_with("crypto-")).map(|x| x.1).sum()),
                peak_rss_hwm: if self.hwm_reset[i] { status_kb(w.pid, "VmHWM") } else { None },
                peak_rss_sampled: max_rss[i],
                rss_end: status_kb(w.pid, "VmRSS"),
                peak_cores_100ms: peak_cores[i].0,
                share_above_one_core: peak_cores[i].1 / secs,
            });
        }
        let own = after.own.unwrap_or(0).saturating_sub(self.before.own.unwrap_or(0));
        let busy = after.machine.0.saturating_sub(self.before.machine.0);
        WindowReport {
            procs,
            generator_cpu_cores: cores(own),
            other_cpu_cores: (cores(busy) - cores(watched_ticks) - cores(own)).max(0.0),
            machine_cpu_cores: cores(busy),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "1234 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(super::stat_ticks(line), Some(300));
    }
}

//! What [`crate::run`] reports: how the program ended, and what it cost.

use std::fmt;
use std::time::Duration;

/// How the sandboxed program ended. Every variant other than `Exited` means the whole
/// sandbox was killed (or died by a signal); in every case no process of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The program exited with this status.
    Exited(i32),
    /// The program was killed by this signal (not by the supervisor).
    Signaled(i32),
    /// The wall-clock limit was reached.
    TimedOut(Duration),
    /// No output for this long.
    Silent(Duration),
    /// More output than this many bytes.
    OutputLimit(u64),
}

impl Outcome {
    /// Whether the program exited with status 0.
    pub fn success(&self) -> bool {
        *self == Outcome::Exited(0)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exited with status {code}"),
            Outcome::Signaled(signal) => write!(f, "killed by signal {signal}"),
            Outcome::TimedOut(limit) => {
                write!(f, "timed out after {} seconds", limit.as_secs_f64())
            }
            Outcome::Silent(limit) => {
                write!(
                    f,
                    "timed out after {} seconds of silence",
                    limit.as_secs_f64()
                )
            }
            Outcome::OutputLimit(limit) => {
                write!(f, "killed after more than {limit} bytes of output")
            }
        }
    }
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// Output bytes the program wrote (all of them, including any past the limit that
    /// were dropped).
    pub output_bytes: u64,
    /// Wall-clock time from `run` to the end of the last process.
    pub elapsed: Duration,
    /// Resource use of the sandbox's processes.
    pub usage: Usage,
}

/// CPU time and memory of the sandbox's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// User CPU time of every process that was reaped.
    pub user_time: Duration,
    /// System CPU time of every process that was reaped.
    pub system_time: Duration,
    /// Largest resident set of any one process, in bytes.
    pub max_rss_bytes: u64,
    /// Figures from the cgroup, when one was used.
    pub cgroup: Option<CgroupUsage>,
}

/// Accounting read from the sandbox's cgroup (covers every process, reaped or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupUsage {
    /// Total CPU time (`cpu.stat` `usage_usec`).
    pub cpu_time: Duration,
    /// Peak memory (`memory.peak`), where the memory controller is enabled.
    pub memory_peak_bytes: Option<u64>,
}

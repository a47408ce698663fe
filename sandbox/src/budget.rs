//! The time and output limits of one run, as its supervisor enforces them: shared by the
//! sandboxed run (`run.rs`) and the unsandboxed one (`host.rs`).

use std::time::{Duration, Instant};

use crate::outcome::Outcome;
use crate::spec::Limits;

pub(crate) struct Budget {
    limits: Limits,
    deadline: Option<Instant>,
    last_output: Instant,
    total: u64,
}

impl Budget {
    /// The budget of a run that started at `start`.
    pub fn new(limits: &Limits, start: Instant) -> Budget {
        Budget {
            limits: *limits,
            deadline: limits.timeout.map(|t| start + t),
            last_output: Instant::now(),
            total: 0,
        }
    }

    /// The time limit reached by `now`, if one is; otherwise how long until the next one
    /// can be (`None`: no time limit).
    pub fn check(&self, now: Instant) -> Result<Option<Duration>, Outcome> {
        let mut wait: Option<Duration> = None;
        if let Some(deadline) = self.deadline {
            if now >= deadline {
                return Err(Outcome::TimedOut(self.limits.timeout.unwrap_or_default()));
            }
            wait = Some(deadline - now);
        }
        if let Some(silence) = self.limits.silence_timeout {
            let quiet_until = self.last_output + silence;
            if now >= quiet_until {
                return Err(Outcome::Silent(silence));
            }
            wait = Some(wait.map_or(quiet_until - now, |w| w.min(quiet_until - now)));
        }
        Ok(wait)
    }

    /// Counts `n` bytes of output that just arrived: how many of them may be passed on,
    /// and the output limit, if they went past it.
    pub fn output(&mut self, n: usize) -> (usize, Option<Outcome>) {
        self.last_output = Instant::now();
        let allowed = match self.limits.max_output_bytes {
            Some(max) => max.saturating_sub(self.total).min(n as u64) as usize,
            None => n,
        };
        self.total += n as u64;
        let over = self
            .limits
            .max_output_bytes
            .filter(|max| self.total > *max)
            .map(Outcome::OutputLimit);
        (allowed, over)
    }

    /// Every output byte counted, past the limit included.
    pub fn total(&self) -> u64 {
        self.total
    }
}

//! The circuit breaker in front of Redis: after `failures_to_open` consecutive failures tier 2
//! is skipped for `open_for`; then one trial operation goes through (half-open), and its
//! outcome closes the breaker or opens it again.
//!
//! A std mutex guards the state: every critical section is a few comparisons, never held across
//! an `.await`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::Serialize;

use super::config::BreakerConfig;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Operations go to Redis.
    Closed,
    /// Redis is skipped until the open period ends.
    Open,
    /// One trial operation is in flight; the others skip Redis until it reports.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// The breaker (shared by every clone of a cache).
#[derive(Debug)]
pub(super) struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
    target: String,
}

/// Leave to run one Redis operation; report its outcome with [`Permit::succeeded`] or
/// [`Permit::failed`]. A permit dropped without a report (the caller's future was dropped
/// mid-operation) counts as a failure, so a cancelled trial never leaves the breaker
/// half-open for ever.
#[derive(Debug)]
pub(super) struct Permit {
    breaker: Arc<Breaker>,
    reported: bool,
}

impl Breaker {
    /// A closed breaker, or an open one (`start_open`: Redis did not answer at open).
    pub(super) fn new(config: BreakerConfig, target: String, start_open: bool) -> Breaker {
        let state = if start_open {
            tracing::warn!(redis = %target, "tier 2 unavailable at start; the breaker is open");
            State::Open {
                until: Instant::now() + config.open_for,
            }
        } else {
            State::Closed { failures: 0 }
        };
        Breaker {
            config,
            state: Mutex::new(state),
            target,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a plain value, valid whatever a panicking holder left.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state (an open breaker whose period ended shows as open until an operation
    /// takes the trial).
    pub(super) fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Leave to run an operation, or `None` to skip Redis.
    pub(super) fn permit(self: &Arc<Breaker>) -> Option<Permit> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => {}
            State::Open { until } if Instant::now() >= until => {
                tracing::info!(redis = %self.target, "circuit breaker half-open: one trial operation");
                *state = State::HalfOpen;
            }
            State::Open { .. } | State::HalfOpen => return None,
        }
        Some(Permit {
            breaker: self.clone(),
            reported: false,
        })
    }

    fn succeeded(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Closed { .. }) {
            tracing::info!(redis = %self.target, "circuit breaker closed: tier 2 is back");
        }
        *state = State::Closed { failures: 0 };
    }

    fn failed(&self) {
        let mut state = self.lock();
        let open = match *state {
            State::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures < self.config.failures_to_open.max(1) {
                    *state = State::Closed { failures };
                    false
                } else {
                    true
                }
            }
            State::HalfOpen => true,
            // A late report from before the breaker opened: it stays open as it is.
            State::Open { .. } => false,
        };
        if open {
            tracing::warn!(
                redis = %self.target,
                open_for_ms = self.config.open_for.as_millis() as u64,
                "circuit breaker open: tier 2 skipped after failures"
            );
            *state = State::Open {
                until: Instant::now() + self.config.open_for,
            };
        }
    }
}

impl Permit {
    /// The operation succeeded: the breaker closes (or stays closed).
    pub(super) fn succeeded(mut self) {
        self.reported = true;
        self.breaker.succeeded();
    }

    /// The operation failed (an error or a timeout).
    pub(super) fn failed(mut self) {
        self.reported = true;
        self.breaker.failed();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.failed();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn breaker(open_for: Duration) -> Arc<Breaker> {
        Arc::new(Breaker::new(
            BreakerConfig {
                failures_to_open: 2,
                open_for,
            },
            "test".into(),
            false,
        ))
    }

    /// Proves the breaker opens after the configured consecutive failures, lets one trial
    /// through after the open period, and closes on its success.
    #[test]
    fn opens_then_half_opens_then_closes() {
        let b = breaker(Duration::ZERO);
        b.permit().expect("closed").failed();
        assert_eq!(b.state(), BreakerState::Closed);
        b.permit().expect("closed").failed();
        assert_eq!(b.state(), BreakerState::Open);
        let trial = b
            .permit()
            .expect("the open period (zero) has ended: a trial");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.permit().is_none(), "only one trial at a time");
        trial.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// Proves a failed or dropped trial opens the breaker again, and a success in between
    /// resets the failure count.
    #[test]
    fn failed_or_dropped_trial_reopens() {
        let b = breaker(Duration::ZERO);
        b.permit().expect("closed").failed();
        b.permit().expect("closed").succeeded();
        b.permit().expect("closed").failed();
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "the success reset the count"
        );
        b.permit().expect("closed").failed();
        assert_eq!(b.state(), BreakerState::Open);
        b.permit().expect("trial").failed();
        assert_eq!(b.state(), BreakerState::Open);
        drop(b.permit().expect("trial"));
        assert_eq!(b.state(), BreakerState::Open);
        let long = breaker(Duration::from_secs(3600));
        long.permit().expect("closed").failed();
        long.permit().expect("closed").failed();
        assert!(long.permit().is_none(), "open for an hour: skipped");
    }
}

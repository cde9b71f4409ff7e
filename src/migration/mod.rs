//! Migration states (design §5): the rules of their transitions, and the transition itself as an
//! event in the log.
//!
//! A state belongs to a (bot, component) pair and moves `disabled → enabled → dual-write →
//! database-only` one step at a time; any state can go back to any earlier one at any time. Every
//! transition is a `ComponentStateChanged` event on the bot's stream, appended with the stream's
//! version as the expected version, so two transitions decided on the same state cannot both
//! land, and the state survives restarts (the log projection holds it).
//!
//! What a step forward needs beyond the rule (the Postgres projector caught up, a clean shadow
//! window) is known only where Postgres is: those guards are checked by [`crate::hybrid::Hybrid`],
//! which calls [`Store::set_component_state`] once they hold.
//!
//! # Layout
//! - this file: [`check_step`], [`TransitionError`], [`Store::set_component_state`],
//!   [`Store::component_history`].
//! - [`supervisor`]: runs the Postgres projector (and the cache invalidation) for the components
//!   some bot has at `enabled` or later, watches Postgres's health, and rolls `database-only`
//!   components back to `dual-write` when it fails.

pub mod supervisor;

use std::fmt;

use serde::Serialize;

use crate::error::StoreError;
use crate::events::{ComponentStateChanged, Event};
use crate::ids::{BotId, Component, MigrationState, StreamId, Timestamp};
use crate::store::{AppendResult, ExpectedVersion, NewEvent, ReadDirection, Store};

/// Which way a transition goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// One state further (needs its guard unless forced).
    Forward,
    /// To any earlier state (always allowed).
    Back,
}

/// A transition refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The component is in that state already.
    #[error("{component} of bot {bot} is {to} already")]
    AlreadyThere {
        /// The bot.
        bot: BotId,
        /// The component.
        component: Component,
        /// Its state.
        to: MigrationState,
    },
    /// A step forward that skips a state.
    #[error("{component} of bot {bot} cannot go from {from} to {to}: forward is one step at a time (next: {next})")]
    SkipsAhead {
        /// The bot.
        bot: BotId,
        /// The component.
        component: Component,
        /// Its state.
        from: MigrationState,
        /// The state asked for.
        to: MigrationState,
        /// The one state it may go to.
        next: MigrationState,
    },
    /// A step forward whose guard does not hold (and was not forced).
    #[error(
        "{component} of bot {bot} cannot go from {from} to {to} yet: {why} (--force overrides)"
    )]
    Guard {
        /// The bot.
        bot: BotId,
        /// The component.
        component: Component,
        /// Its state.
        from: MigrationState,
        /// The state asked for.
        to: MigrationState,
        /// What is missing, one line.
        why: String,
    },
    /// No database is configured, so nothing could project or serve the component.
    #[error("{component} of bot {bot} cannot leave disabled: no database is configured (DATABASE_URL or DB_HOST/DB_NAME)")]
    NoDatabase {
        /// The bot.
        bot: BotId,
        /// The component.
        component: Component,
    },
    /// The state changed under the transition (another transition landed first).
    #[error("{component} of bot {bot} changed state while this transition was decided; look at its state again")]
    Raced {
        /// The bot.
        bot: BotId,
        /// The component.
        component: Component,
    },
}

impl fmt::Display for MigrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl MigrationState {
    /// Every state, in order.
    pub const ALL: [MigrationState; 4] = [
        MigrationState::Disabled,
        MigrationState::Enabled,
        MigrationState::DualWrite,
        MigrationState::DatabaseOnly,
    ];

    /// The name used in the CLI, the API and the log's JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationState::Disabled => "disabled",
            MigrationState::Enabled => "enabled",
            MigrationState::DualWrite => "dual-write",
            MigrationState::DatabaseOnly => "database-only",
        }
    }

    /// The state one step forward, if any.
    pub fn next(self) -> Option<MigrationState> {
        match self {
            MigrationState::Disabled => Some(MigrationState::Enabled),
            MigrationState::Enabled => Some(MigrationState::DualWrite),
            MigrationState::DualWrite => Some(MigrationState::DatabaseOnly),
            MigrationState::DatabaseOnly => None,
        }
    }

    /// Whether the component's Postgres projection runs in this state.
    pub fn projects(self) -> bool {
        self >= MigrationState::Enabled
    }
}

impl std::str::FromStr for MigrationState {
    type Err = String;

    fn from_str(text: &str) -> Result<MigrationState, String> {
        MigrationState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown migration state {text:?} (expected disabled, enabled, dual-write or database-only)"
                )
            })
    }
}

/// The rule every transition obeys, before any guard: forward one step at a time, back to any
/// earlier state, never to the state it is in.
///
/// # Errors
/// [`TransitionError::AlreadyThere`] or [`TransitionError::SkipsAhead`].
pub fn check_step(
    bot: &BotId,
    component: Component,
    from: MigrationState,
    to: MigrationState,
) -> Result<Step, TransitionError> {
    if from == to {
        return Err(TransitionError::AlreadyThere {
            bot: bot.clone(),
            component,
            to,
        });
    }
    if to < from {
        return Ok(Step::Back);
    }
    match from.next() {
        Some(next) if next == to => Ok(Step::Forward),
        next => Err(TransitionError::SkipsAhead {
            bot: bot.clone(),
            component,
            from,
            to,
            next: next.unwrap_or(from),
        }),
    }
}

/// A transition as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// Where the event is.
    pub position: hybridstore_wal::Position,
    /// When it was recorded.
    pub at: Timestamp,
    /// The event.
    #[serde(flatten)]
    pub change: ComponentStateChanged,
}

/// Why [`Store::set_component_state`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SetStateError {
    /// The rule refused it.
    #[error(transparent)]
    Refused(#[from] TransitionError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Moves `component` of `bot` to `to`, checking the step rule ([`check_step`]) against the
    /// state the log projection holds, and appending the `ComponentStateChanged` event with the
    /// bot stream's version as expected version (a transition that raced another fails with
    /// [`TransitionError::Raced`] instead of landing on a state it did not see). Guards of a step
    /// forward are the caller's ([`crate::hybrid::Hybrid::set_component_state`] checks them).
    ///
    /// # Errors
    /// [`SetStateError::Refused`] when the rule refuses or the state raced;
    /// [`SetStateError::Store`] when the append fails.
    pub async fn set_component_state(
        &self,
        bot: &BotId,
        component: Component,
        to: MigrationState,
        reason: &str,
        automatic: bool,
    ) -> Result<(Step, AppendResult), SetStateError> {
        let stream = StreamId::bot(bot);
        // The state as of the stream's last event: the expected version below then refuses the
        // append if any event landed on the stream after the state was read.
        let head = self.stream_head(&stream);
        let from = self
            .read_projection(head.map(|(_, position)| position), |p| {
                p.component_state(bot, component)
            })
            .await?;
        let version = head.map(|(version, _)| version);
        let step = check_step(bot, component, from, to)?;
        let expected = match version {
            Some(version) => ExpectedVersion::Exact(version),
            None => ExpectedVersion::NoStream,
        };
        let event = NewEvent::new(Event::ComponentStateChanged(ComponentStateChanged {
            component,
            from,
            to,
            reason: reason.to_owned(),
            automatic,
        }));
        match self.append(&stream, expected, vec![event]).await {
            Ok(appended) => Ok((step, appended)),
            Err(StoreError::WrongExpectedVersion { .. }) => Err(TransitionError::Raced {
                bot: bot.clone(),
                component,
            }
            .into()),
            Err(error) => Err(error.into()),
        }
    }

    /// The transitions of `component` of `bot`, newest first, at most `limit`.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub async fn component_history(
        &self,
        bot: &BotId,
        component: Component,
        limit: usize,
    ) -> Result<Vec<Transition>, StoreError> {
        let stream = StreamId::bot(bot);
        let mut found = Vec::new();
        let Some((mut before, _)) = self.stream_head(&stream) else {
            return Ok(Vec::new());
        };
        // The bot stream holds configuration values too: read it backward in pages until enough
        // transitions of the component are found or the stream's start is reached.
        const PAGE: usize = 256;
        loop {
            let page = self
                .read_stream(&stream, before, ReadDirection::Backward, PAGE)
                .await?;
            let done = page.len() < PAGE;
            for recorded in &page {
                if let Event::ComponentStateChanged(change) = &recorded.event {
                    if change.component == component {
                        found.push(Transition {
                            position: recorded.position,
                            at: recorded.recorded_at,
                            change: change.clone(),
                        });
                        if found.len() >= limit {
                            return Ok(found);
                        }
                    }
                }
            }
            match page.last() {
                Some(last) if !done && last.stream_version.0 > 0 => {
                    before = crate::ids::StreamVersion(last.stream_version.0 - 1);
                }
                _ => return Ok(found),
            }
        }
    }
}

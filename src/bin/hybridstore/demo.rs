//! The demo: simulates the bot's message loop on the embedded default — the [`Store`] over the
//! log alone, no database, no servers — so a newcomer can see the engine work and inspect what it
//! leaves behind.
//!
//! What one simulated chat does, as the bot would:
//! 1. At start: `ProfileCreated` (expected version `no_stream`).
//! 2. Per exchange: append `MessageReceived` (idempotency key `tg:{chat}:{message}:in`); then the
//!    reads the bot makes before replying — the profile document, the last 20 messages, the
//!    conversation head and a configuration value — each with `min_position` set to the append's
//!    position (read-your-writes); then append `MessageSent` with the generation's metadata
//!    (model, response id, tokens, latency).
//! 3. Every 10th exchange: `ConversationAnalyzed` and `ProfileFactsRecorded` as one atomic
//!    two-event append.
//!
//! `handlers` tasks run concurrently, each over its own chats (as the bot serialises the messages
//! of one chat). Afterwards the demo rebuilds the projection from the whole log and checks it
//! equals the live one and holds what the run wrote, then reports throughput and latencies.
//!
//! A second run on the same data directory simulates new chats (ids after the last one there),
//! so runs add up and never collide on idempotency keys.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hybridstore_wal::Position;

use hybridstore::events::{
    ConfigValueSet, ConversationAnalyzed, Event, Generation, JsonText, MessageReceived,
    MessageSent, ProfileCreated, ProfileFactsRecorded,
};
use hybridstore::ids::{BotId, StreamId};
use hybridstore::projection::Projection;
use hybridstore::store::{ExpectedVersion, NewEvent, Store, StoreConfig};

/// The bot the demo plays.
pub const DEMO_BOT_ID: &str = "demo";
/// The first chat id of a demo run on an empty data directory.
pub const FIRST_CHAT_ID: i64 = 100_000;
/// Messages the bot reads before replying.
pub const HISTORY_LEN: usize = 20;
/// Every this many exchanges a chat is analysed.
pub const ANALYSIS_EVERY_EXCHANGES: u64 = 10;
/// Scope of the configuration value the bot reads on its hot path.
pub const CONFIG_SCOPE: &str = "global";
/// Key of that value: the model replies are generated with.
pub const CONFIG_KEY_REPLY_MODEL: &str = "reply_model";
/// The model the demo configures.
pub const REPLY_MODEL: &str = "demo-llm-1";

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Chats to simulate.
    pub chats: u64,
    /// Message exchanges (one received, one sent) per chat.
    pub exchanges_per_chat: u64,
    /// Concurrent handler tasks, each over its own chats.
    pub handlers: usize,
}

impl DemoConfig {
    /// Checks the numbers before anything is opened.
    ///
    /// # Errors
    /// A message for the operator when a number is zero or too large.
    pub fn validate(&self) -> Result<(), String> {
        if self.chats == 0 || self.exchanges_per_chat == 0 || self.handlers == 0 {
            return Err("--chats, --exchanges and --handlers must be at least 1".into());
        }
        if self.chats > 10_000_000 || self.exchanges_per_chat > 1_000_000 {
            return Err("--chats is limited to 10000000 and --exchanges to 1000000".into());
        }
        Ok(())
    }

    /// The first line the demo prints.
    pub fn banner(&self, data_dir: &Path) -> String {
        format!(
            "hybridstore demo: {} chats x {} exchanges, {} handler tasks; log only (no database, \
             no servers); durable appends (fdatasync) into {}",
            self.chats,
            self.exchanges_per_chat,
            self.handlers
                .min(usize::try_from(self.chats).unwrap_or(usize::MAX)),
            data_dir.join(hybridstore::WAL_SUBDIR).display()
        )
    }
}

/// Nearest-rank percentiles of a set of latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Latencies {
    /// Operations measured.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

impl Latencies {
    /// Percentiles of `samples` (sorted here).
    pub fn of(samples: &mut [Duration]) -> Latencies {
        samples.sort_unstable();
        let rank = |q: f64| {
            let n = samples.len();
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
            samples.get(rank - 1).copied().unwrap_or_default()
        };
        Latencies {
            count: samples.len() as u64,
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Latencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.1?}, p99 {:.1?}, max {:.1?}",
            self.p50, self.p99, self.max
        )
    }
}

/// The hot-path reads, in the order the bot makes them.
pub const READ_NAMES: [&str; 4] = [
    "profile",
    "last 20 messages",
    "conversation head",
    "config value",
];

/// What the demo did and measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The data directory (the log is in its `wal/`).
    pub data_dir: PathBuf,
    /// The chats simulated: ids `first_chat..first_chat + chats`.
    pub first_chat: i64,
    /// Chats simulated.
    pub chats: u64,
    /// Exchanges per chat.
    pub exchanges_per_chat: u64,
    /// Appends made (each one atomic batch).
    pub appends: u64,
    /// Events those appends wrote.
    pub events: u64,
    /// Wall time of the message loop.
    pub elapsed: Duration,
    /// Latency of every append.
    pub append_latency: Latencies,
    /// Latency of every hot-path read.
    pub read_latency: Latencies,
    /// Latency per kind of read, as in [`READ_NAMES`].
    pub read_latency_by_kind: [Latencies; 4],
    /// The log's durable end after the run.
    pub durable_end: Position,
    /// Events in the whole log, rebuilt into a fresh projection after the run.
    pub rebuilt_events: u64,
    /// How long that rebuild took.
    pub rebuild_elapsed: Duration,
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "appends:  {} appends ({} events) in {:.2?}: {:.0} appends/s, {:.0} events/s",
            self.appends,
            self.events,
            self.elapsed,
            self.appends as f64 / seconds,
            self.events as f64 / seconds
        )?;
        writeln!(f, "          append latency {}", self.append_latency)?;
        writeln!(
            f,
            "reads:    {} hot-path reads, read-your-writes (min_position = the append's position): {}",
            self.read_latency.count, self.read_latency
        )?;
        for (name, latency) in READ_NAMES.iter().zip(&self.read_latency_by_kind) {
            writeln!(f, "          {name:<18} {latency}")?;
        }
        writeln!(
            f,
            "log:      {} events appended by this run (chats {}..={}); the log ends at position {}",
            self.events,
            self.first_chat,
            self.first_chat + self.chats as i64 - 1,
            self.durable_end
        )?;
        writeln!(
            f,
            "check:    rebuilt the projection from the whole log ({} events in {:.2?}): equals the \
             live one; every chat has {} messages and {} analyses",
            self.rebuilt_events,
            self.rebuild_elapsed,
            2 * self.exchanges_per_chat,
            self.exchanges_per_chat / ANALYSIS_EVERY_EXCHANGES
        )?;
        let absolute = self
            .data_dir
            .canonicalize()
            .unwrap_or_else(|_| self.data_dir.clone());
        writeln!(
            f,
            "data dir: {} (the log is in {})",
            absolute.display(),
            absolute.join(hybridstore::WAL_SUBDIR).display()
        )?;
        writeln!(
            f,
            "inspect:  cargo run -p hybridstore-audit -- dump {} --limit 20   (also: verify, stat; --format json)",
            self.data_dir.display()
        )
    }
}

/// Latencies one handler task measured.
#[derive(Debug, Default)]
struct HandlerStats {
    appends: u64,
    events: u64,
    append: Vec<Duration>,
    reads: [Vec<Duration>; 4],
}

/// Runs the demo against the store in `data_dir`, in the default (`always`) durability mode.
///
/// # Errors
/// If the store cannot be opened, an append or read fails, a read does not see the handler's own
/// write, or the rebuilt projection differs from the live one or from what the run wrote.
pub async fn run(data_dir: &Path, config: &DemoConfig) -> Result<DemoReport> {
    config.validate().map_err(anyhow::Error::msg)?;
    let store = Store::open(StoreConfig::new(data_dir))
        .await
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let bot = BotId::new(DEMO_BOT_ID).context("the demo's bot id")?;
    // New chats after any earlier run's, so runs add up without colliding.
    let first_chat = store
        .read_projection(None, |p| {
            p.conversation_chats(&bot)
                .last()
                .map_or(FIRST_CHAT_ID, |last| (last + 1).max(FIRST_CHAT_ID))
        })
        .await?;
    let chats = i64::try_from(config.chats).context("--chats")?;
    let start_position = store.durable_end();

    let started = Instant::now();
    let configured = Instant::now();
    store
        .append(
            &StreamId::bot(&bot),
            ExpectedVersion::Any,
            vec![NewEvent::new(Event::ConfigValueSet(ConfigValueSet {
                scope: CONFIG_SCOPE.into(),
                key: CONFIG_KEY_REPLY_MODEL.into(),
                value: JsonText::from_value(&serde_json::Value::from(REPLY_MODEL)),
            }))],
        )
        .await
        .context("setting the reply model")?;
    let mut total = HandlerStats {
        appends: 1,
        events: 1,
        append: vec![configured.elapsed()],
        ..HandlerStats::default()
    };
    let handlers = config
        .handlers
        .min(usize::try_from(chats).unwrap_or(usize::MAX));
    let mut tasks = tokio::task::JoinSet::new();
    for handler in 0..handlers {
        let own: Vec<i64> = (handler as i64..chats)
            .step_by(handlers)
            .map(|offset| first_chat + offset)
            .collect();
        tasks.spawn(handle_chats(
            store.clone(),
            bot.clone(),
            own,
            config.exchanges_per_chat,
        ));
    }
    while let Some(joined) = tasks.join_next().await {
        let stats = joined.context("a handler task panicked")??;
        total.appends += stats.appends;
        total.events += stats.events;
        total.append.extend(stats.append);
        for (all, own) in total.reads.iter_mut().zip(stats.reads) {
            all.extend(own);
        }
    }
    let elapsed = started.elapsed();
    let durable_end = store.durable_end();
    ensure!(
        durable_end.0 - start_position.0 == total.events,
        "the log grew by {} events, the run appended {}",
        durable_end.0 - start_position.0,
        total.events
    );

    let live = store.projection_snapshot().await?;
    let rebuild_started = Instant::now();
    let (rebuilt, stats) = store.rebuild_projection().await?;
    let rebuild_elapsed = rebuild_started.elapsed();
    ensure!(
        rebuilt == live,
        "the projection rebuilt from the log differs from the live one"
    );
    check_chats(&rebuilt, &bot, first_chat, chats, config.exchanges_per_chat)?;
    store.close().await.context("closing the store")?;

    let mut all_reads: Vec<Duration> = total.reads.iter().flatten().copied().collect();
    let [profile, history, head, value] = total.reads.map(|mut reads| Latencies::of(&mut reads));
    Ok(DemoReport {
        data_dir: data_dir.to_owned(),
        first_chat,
        chats: config.chats,
        exchanges_per_chat: config.exchanges_per_chat,
        appends: total.appends,
        events: total.events,
        elapsed,
        append_latency: Latencies::of(&mut total.append),
        read_latency: Latencies::of(&mut all_reads),
        read_latency_by_kind: [profile, history, head, value],
        durable_end,
        rebuilt_events: stats.events,
        rebuild_elapsed,
    })
}

/// One handler task: creates its chats' profiles, then plays their exchanges round-robin.
async fn handle_chats(
    store: Store,
    bot: BotId,
    chats: Vec<i64>,
    exchanges: u64,
) -> Result<HandlerStats> {
    let mut stats = HandlerStats::default();
    for &chat in &chats {
        let created = NewEvent::new(Event::ProfileCreated(ProfileCreated {
            name: partner_name(chat).into(),
        }));
        let stream = StreamId::conversation(&bot, chat);
        timed_append(
            &store,
            &stream,
            ExpectedVersion::NoStream,
            vec![created],
            &mut stats,
        )
        .await
        .with_context(|| format!("creating the profile of chat {chat}"))?;
    }
    for turn in 0..exchanges {
        for &chat in &chats {
            exchange(&store, &bot, chat, turn, &mut stats)
                .await
                .with_context(|| format!("chat {chat}, exchange {turn}"))?;
        }
    }
    Ok(stats)
}

async fn timed_append(
    store: &Store,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    stats: &mut HandlerStats,
) -> Result<Position> {
    let count = events.len() as u64;
    let started = Instant::now();
    let appended = store.append(stream, expected, events).await?;
    stats.append.push(started.elapsed());
    stats.appends += 1;
    stats.events += count;
    Ok(appended.last_position)
}

/// One exchange of one chat: the message in, the reads before replying, the reply, and every
/// tenth time the analysis.
async fn exchange(
    store: &Store,
    bot: &BotId,
    chat: i64,
    turn: u64,
    stats: &mut HandlerStats,
) -> Result<()> {
    let stream = StreamId::conversation(bot, chat);
    // The partner's messages get odd Telegram ids, the bot's replies even ones.
    let message_id = i64::try_from(turn * 2 + 1).context("message id")?;
    let text = partner_text(chat, turn);
    let received = NewEvent::new(Event::MessageReceived(MessageReceived {
        telegram_message_id: Some(message_id),
        text: text.clone(),
        content_type: "text".into(),
        legacy_ts: None,
    }))
    .with_key(format!("tg:{chat}:{message_id}:in"));
    let position =
        timed_append(store, &stream, ExpectedVersion::Any, vec![received], stats).await?;

    // The hot path: every read must see the message just appended.
    let min = Some(position);
    let started = Instant::now();
    let profile = store
        .read_projection(min, |p| p.profile_shared(bot, chat))
        .await?;
    stats.reads[0].push(started.elapsed());
    let started = Instant::now();
    let history = store.last_messages(&stream, HISTORY_LEN, min).await?;
    stats.reads[1].push(started.elapsed());
    let started = Instant::now();
    let head = store
        .read_projection(min, |p| p.conversation(bot, chat).map(|c| c.head))
        .await?;
    stats.reads[2].push(started.elapsed());
    let started = Instant::now();
    let model = store
        .read_projection(min, |p| {
            p.config_value(bot, CONFIG_SCOPE, CONFIG_KEY_REPLY_MODEL)
                .cloned()
        })
        .await?;
    stats.reads[3].push(started.elapsed());

    let profile = profile.context("the profile is missing")?;
    ensure!(
        profile.message_count == 2 * turn + 1,
        "the profile counts {} messages, expected {}",
        profile.message_count,
        2 * turn + 1
    );
    ensure!(
        history.last().is_some_and(|m| *m.text == *text),
        "the last message read is not the one just received"
    );
    ensure!(
        history.len() == HISTORY_LEN.min(2 * turn as usize + 1),
        "read {} messages of history",
        history.len()
    );
    let head = head.context("the conversation head is missing")?;
    ensure!(
        head.messages_in == turn + 1 && head.unanswered == 1,
        "head {head:?}"
    );
    let model = model
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .unwrap_or(REPLY_MODEL)
        .to_owned();

    let prompt_tokens = 180 + 35 * history.len() as u32;
    let reply = NewEvent::new(Event::MessageSent(MessageSent {
        text: reply_text(&profile.name, chat, turn),
        kind: "reply".into(),
        generation: Some(Generation {
            model,
            response_id: Some(format!("resp_{chat}_{turn}")),
            prompt_tokens,
            completion_tokens: 30 + (turn % 40) as u32,
            latency_ms: 600 + ((chat as u64 + turn * 37) % 900) as u32,
        }),
        legacy_ts: None,
    }))
    .with_key(format!("tg:{chat}:{message_id}:out"));
    timed_append(store, &stream, ExpectedVersion::Any, vec![reply], stats).await?;

    if turn % ANALYSIS_EVERY_EXCHANGES == ANALYSIS_EVERY_EXCHANGES - 1 {
        let analysis_id = format!("analysis-{turn}");
        let seed = chat.unsigned_abs() + turn;
        let (mood, topic) = (
            MOODS[seed as usize % MOODS.len()],
            TOPICS[seed as usize % TOPICS.len()],
        );
        let facts = serde_json::json!({
            "mood": mood,
            "interests": [topic],
            "messages_seen": 2 * (turn + 1),
        });
        let analysis = vec![
            NewEvent::new(Event::ConversationAnalyzed(ConversationAnalyzed {
                analysis_id: analysis_id.clone(),
                summary: format!("{} chatted about {topic} and seemed {mood}.", profile.name),
            })),
            NewEvent::new(Event::ProfileFactsRecorded(ProfileFactsRecorded {
                snapshot_id: analysis_id,
                facts: JsonText::from_value(&facts),
            })),
        ];
        timed_append(store, &stream, ExpectedVersion::Any, analysis, stats).await?;
    }
    Ok(())
}

/// Checks the rebuilt projection holds what the run wrote for every chat.
fn check_chats(
    projection: &Projection,
    bot: &BotId,
    first_chat: i64,
    chats: i64,
    exchanges: u64,
) -> Result<()> {
    let analyses = (exchanges / ANALYSIS_EVERY_EXCHANGES) as usize;
    for chat in first_chat..first_chat + chats {
        let profile = projection
            .profile(bot, chat)
            .with_context(|| format!("chat {chat} has no profile after the rebuild"))?;
        ensure!(
            profile.message_count == 2 * exchanges
                && profile.summary.len() == analyses
                && profile.profile.len() == analyses
                && profile.previous_response_id.as_deref()
                    == Some(format!("resp_{chat}_{}", exchanges - 1).as_str()),
            "chat {chat}: the rebuilt profile does not match the run: {profile:?}"
        );
    }
    Ok(())
}

const NAMES: [&str; 8] = [
    "Anna", "Maria", "Sofia", "Elena", "Daria", "Olga", "Irina", "Vera",
];
const TOPICS: [&str; 6] = ["music", "travel", "books", "cooking", "films", "hiking"];
const MOODS: [&str; 4] = ["cheerful", "curious", "tired", "playful"];

fn partner_name(chat: i64) -> &'static str {
    NAMES[chat.unsigned_abs() as usize % NAMES.len()]
}

fn partner_text(chat: i64, turn: u64) -> String {
    let topic = TOPICS[(chat.unsigned_abs() + turn) as usize % TOPICS.len()];
    format!("hi! been thinking about {topic} all day - what about you? (message {turn})")
}

fn reply_text(name: &str, chat: i64, turn: u64) -> String {
    let topic = TOPICS[(chat.unsigned_abs() + turn + 1) as usize % TOPICS.len()];
    format!("That sounds lovely, {name}! I have been into {topic} lately. Tell me more? ({turn})")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves percentiles are nearest-rank and an empty set is all zeros.
    #[test]
    fn latencies_are_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let latencies = Latencies::of(&mut samples);
        assert_eq!(latencies.count, 100);
        assert_eq!(latencies.p50, Duration::from_micros(50));
        assert_eq!(latencies.p99, Duration::from_micros(99));
        assert_eq!(latencies.max, Duration::from_micros(100));
        assert_eq!(Latencies::of(&mut []), Latencies::default());
    }

    /// Proves bad numbers are refused before anything is opened.
    #[test]
    fn config_validation() {
        let config = |chats, exchanges_per_chat, handlers| DemoConfig {
            chats,
            exchanges_per_chat,
            handlers,
        };
        assert!(config(1, 1, 1).validate().is_ok());
        assert!(config(0, 1, 1).validate().is_err());
        assert!(config(1, 0, 1).validate().is_err());
        assert!(config(1, 1, 0).validate().is_err());
        assert!(config(u64::MAX, 1, 1).validate().is_err());
    }
}

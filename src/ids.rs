//! Identifiers: bots, streams, stream versions, timestamps, components and migration states.
//! Every id is a newtype; stream ids are parsed and validated, never passed as bare strings.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::InputError;

/// The longest bot id accepted.
pub const BOT_ID_LEN_MAX: usize = 64;

/// A bot's id: 1 to 64 ASCII letters, digits or underscores (no `-`, which separates the parts of
/// a stream id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BotId(Arc<str>);

impl BotId {
    /// Validates a bot id.
    ///
    /// # Errors
    /// [`InputError::InvalidBotId`] when empty, too long, or with other characters.
    pub fn new(id: impl Into<String>) -> Result<BotId, InputError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= BOT_ID_LEN_MAX
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid {
            Ok(BotId(id.into()))
        } else {
            Err(InputError::InvalidBotId { id })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BotId {
    type Error = InputError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        BotId::new(value)
    }
}

impl From<BotId> for String {
    fn from(id: BotId) -> String {
        id.0.to_string()
    }
}

impl fmt::Display for BotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kinds of stream, each named by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// `bot-{bot}`: configuration and component states.
    Bot,
    /// `user-{bot}-{user}`: a Telegram user of the bot.
    User,
    /// `conv-{bot}-{chat}`: one chat: messages, analyses, the partner's profile, follow-ups.
    Conversation,
    /// `telemetry-{bot}`: analytics that belong to no domain event.
    Telemetry,
}

/// A stream id: `bot-{bot}`, `user-{bot}-{user}`, `conv-{bot}-{chat}` or `telemetry-{bot}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId {
    kind: StreamKind,
    bot: BotId,
    /// The user id or chat id for user and conversation streams.
    key: Option<i64>,
}

impl StreamId {
    /// `bot-{bot}`.
    pub fn bot(bot: &BotId) -> StreamId {
        StreamId {
            kind: StreamKind::Bot,
            bot: bot.clone(),
            key: None,
        }
    }
    /// `user-{bot}-{user}`.
    pub fn user(bot: &BotId, user_id: i64) -> StreamId {
        StreamId {
            kind: StreamKind::User,
            bot: bot.clone(),
            key: Some(user_id),
        }
    }
    /// `conv-{bot}-{chat}`.
    pub fn conversation(bot: &BotId, chat_id: i64) -> StreamId {
        StreamId {
            kind: StreamKind::Conversation,
            bot: bot.clone(),
            key: Some(chat_id),
        }
    }
    /// `telemetry-{bot}`.
    pub fn telemetry(bot: &BotId) -> StreamId {
        StreamId {
            kind: StreamKind::Telemetry,
            bot: bot.clone(),
            key: None,
        }
    }
    /// The stream's kind.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }
    /// The bot the stream belongs to.
    pub fn bot_id(&self) -> &BotId {
        &self.bot
    }
    /// The user id (user streams) or chat id (conversation streams).
    pub fn key(&self) -> Option<i64> {
        self.key
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.kind {
            StreamKind::Bot => "bot",
            StreamKind::User => "user",
            StreamKind::Conversation => "conv",
            StreamKind::Telemetry => "telemetry",
        };
        match self.key {
            Some(key) => write!(f, "{prefix}-{}-{key}", self.bot),
            None => write!(f, "{prefix}-{}", self.bot),
        }
    }
}

/// The longest stream id text accepted.
pub const STREAM_ID_LEN_MAX: usize = 128;

impl FromStr for StreamId {
    type Err = InputError;

    fn from_str(text: &str) -> Result<StreamId, InputError> {
        let invalid = |reason: &'static str| InputError::InvalidStreamId {
            id: text.chars().take(STREAM_ID_LEN_MAX + 8).collect(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        if text.len() > STREAM_ID_LEN_MAX {
            return Err(invalid("longer than 128 bytes"));
        }
        let (prefix, rest) = text
            .split_once('-')
            .ok_or_else(|| invalid("expected PREFIX-BOT[-KEY]"))?;
        let (kind, keyed) = match prefix {
            "bot" => (StreamKind::Bot, false),
            "user" => (StreamKind::User, true),
            "conv" => (StreamKind::Conversation, true),
            "telemetry" => (StreamKind::Telemetry, false),
            _ => {
                return Err(invalid(
                    "unknown prefix (expected bot, user, conv or telemetry)",
                ))
            }
        };
        let (bot, key) = if keyed {
            let (bot, key) = rest
                .split_once('-')
                .ok_or_else(|| invalid("missing the user or chat id"))?;
            let key: i64 = key
                .parse()
                .map_err(|_| invalid("the user or chat id is not an integer"))?;
            (bot, Some(key))
        } else {
            (rest, None)
        };
        let bot = BotId::new(bot).map_err(|_| invalid("bad bot id (1-64 of A-Z a-z 0-9 _)"))?;
        Ok(StreamId { kind, bot, key })
    }
}

impl TryFrom<String> for StreamId {
    type Error = InputError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<StreamId> for String {
    fn from(id: StreamId) -> String {
        id.to_string()
    }
}

/// The 0-based index of an event within its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamVersion(pub u64);

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Milliseconds since the Unix epoch, UTC.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Now, from the system clock.
    pub fn now() -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    /// Days since 1970-01-01 (UTC).
    pub fn day(self) -> i64 {
        self.0.div_euclid(86_400_000)
    }

    /// Parses a UTC calendar date `YYYY-MM-DD` into days since 1970-01-01.
    pub fn parse_date(date: &str) -> Option<i64> {
        let mut parts = date.splitn(3, '-');
        let (y, m, d): (i64, u32, u32) = (
            parts.next()?.parse::<i64>().ok()?,
            parts.next()?.parse::<u32>().ok()?,
            parts.next()?.parse::<u32>().ok()?,
        );
        // Years outside this range would overflow the day arithmetic; no bot has messages there.
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(0..=999_999).contains(&y) {
            return None;
        }
        let days = days_from_civil(y, m, d);
        (civil_from_days(days) == (y, m, d)).then_some(days)
    }

    /// The UTC calendar date, `YYYY-MM-DD`.
    pub fn date(self) -> String {
        Timestamp::date_of_day(self.day())
    }

    /// The calendar date of a day number (days since 1970-01-01), `YYYY-MM-DD`; every day a
    /// [`Timestamp`] can fall on has one.
    pub fn date_of_day(day: i64) -> String {
        let (y, m, d) = civil_from_days(day);
        format!("{y:04}-{m:02}-{d:02}")
    }

    /// RFC 3339 with milliseconds, e.g. `2026-11-24T21:34:12.345Z`.
    pub fn to_rfc3339(self) -> String {
        // Written digit by digit: the projection formats one per message, and `format!` with
        // padding costs several times more.
        let (y, m, d) = civil_from_days(self.day());
        let ms = self.0.rem_euclid(86_400_000);
        let mut out = String::with_capacity(24);
        let fields: [(i64, u32, Option<char>); 7] = [
            (y, 4, Some('-')),
            (i64::from(m), 2, Some('-')),
            (i64::from(d), 2, Some('T')),
            (ms / 3_600_000, 2, Some(':')),
            (ms / 60_000 % 60, 2, Some(':')),
            (ms / 1000 % 60, 2, Some('.')),
            (ms % 1000, 3, None),
        ];
        if !(0..=9999).contains(&y) {
            return format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                ms / 3_600_000,
                ms / 60_000 % 60,
                ms / 1000 % 60,
                ms % 1000
            );
        }
        for (value, width, separator) in fields {
            for place in (0..width).rev() {
                out.push(char::from(b'0' + (value / 10i64.pow(place) % 10) as u8));
            }
            if let Some(separator) = separator {
                out.push(separator);
            }
        }
        out.push('Z');
        out
    }
}

/// Converts a civil date to days since the epoch (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Converts days since the epoch to a (year, month, day) civil date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The components whose reads migrate from the log projection to Postgres independently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// Users of the bot.
    Users,
    /// Chat partners' profiles.
    Profiles,
    /// Configuration values and component states.
    Configuration,
    /// Messages and conversation heads.
    Conversations,
    /// Daily counters.
    Analytics,
}

impl Component {
    /// Every component.
    pub const ALL: [Component; 5] = [
        Component::Users,
        Component::Profiles,
        Component::Configuration,
        Component::Conversations,
        Component::Analytics,
    ];

    /// The component's name, as in configuration and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Users => "users",
            Component::Profiles => "profiles",
            Component::Configuration => "configuration",
            Component::Conversations => "conversations",
            Component::Analytics => "analytics",
        }
    }
}

impl FromStr for Component {
    type Err = InputError;
    fn from_str(name: &str) -> Result<Component, InputError> {
        Component::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .ok_or_else(|| InputError::UnknownComponent {
                name: name.to_owned(),
            })
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of components (which parts of a projection to maintain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ComponentSet(u8);

impl ComponentSet {
    /// No component.
    pub const NONE: ComponentSet = ComponentSet(0);
    /// Every component.
    pub const ALL: ComponentSet = ComponentSet(0b1_1111);

    fn bit(component: Component) -> u8 {
        1 << (component as u8)
    }

    /// The set holding `components`.
    pub fn of(components: impl IntoIterator<Item = Component>) -> ComponentSet {
        components
            .into_iter()
            .fold(ComponentSet::NONE, |set, c| set.with(c))
    }

    /// This set plus `component`.
    #[must_use]
    pub fn with(self, component: Component) -> ComponentSet {
        ComponentSet(self.0 | ComponentSet::bit(component))
    }

    /// Whether `component` is in the set.
    pub fn contains(self, component: Component) -> bool {
        self.0 & ComponentSet::bit(component) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The components in the set, in [`Component::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Component> {
        Component::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    /// Parses a comma-separated list of component names (`all` for every one).
    ///
    /// # Errors
    /// [`InputError::UnknownComponent`] for a name that is not a component.
    pub fn parse_list(list: &str) -> Result<ComponentSet, InputError> {
        let mut set = ComponentSet::NONE;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                set = ComponentSet::ALL;
            } else {
                set = set.with(name.parse()?);
            }
        }
        Ok(set)
    }
}

impl fmt::Display for ComponentSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Component::as_str).collect();
        f.write_str(&names.join(","))
    }
}

/// Where a component's reads come from (design §5).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationState {
    /// Log projection only; no Postgres projector.
    #[default]
    Disabled,
    /// The Postgres projector backfills and follows; reads from the log projection.
    Enabled,
    /// Reads from the log projection, a sample shadow-read from Postgres and compared.
    DualWrite,
    /// Reads from memory cache, Redis, then Postgres.
    DatabaseOnly,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Proves stream ids round-trip through text and bad ones are refused with a reason.
    #[test]
    fn stream_ids() {
        let bot = BotId::new("girlbot_1").unwrap();
        for id in [
            StreamId::bot(&bot),
            StreamId::user(&bot, 42),
            StreamId::conversation(&bot, -100123),
            StreamId::telemetry(&bot),
        ] {
            assert_eq!(id.to_string().parse::<StreamId>().unwrap(), id);
        }
        assert_eq!(
            StreamId::conversation(&bot, 7).to_string(),
            "conv-girlbot_1-7"
        );
        for bad in [
            "",
            "conv-bot",
            "conv-bot-x",
            "chat-bot-1",
            "bot-",
            "bot-a-b",
            &"x".repeat(200),
        ] {
            assert!(
                matches!(
                    bad.parse::<StreamId>(),
                    Err(InputError::InvalidStreamId { .. })
                ),
                "{bad:?}"
            );
        }
    }

    /// Proves component lists parse to the named sets and refuse unknown names.
    #[test]
    fn component_lists() {
        let set = ComponentSet::parse_list("users, profiles").unwrap();
        assert_eq!(set.to_string(), "users,profiles");
        assert!(!set.contains(Component::Analytics));
        assert_eq!(ComponentSet::parse_list("all").unwrap(), ComponentSet::ALL);
        assert_eq!(ComponentSet::of(Component::ALL), ComponentSet::ALL);
        assert!(ComponentSet::parse_list("users,bogus").is_err());
    }

    /// Proves dates are computed in UTC across the epoch and leap days.
    #[test]
    fn dates() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp(951_782_400_000).date(), "2000-02-29");
        assert_eq!(Timestamp(-1).date(), "1969-12-31");
        for day in [-700i64, -1, 0, 11_016, 20_000, 1_000_000] {
            let date = Timestamp(day * 86_400_000).date();
            assert_eq!(Timestamp::parse_date(&date), Some(day), "{date}");
        }
        assert_eq!(Timestamp::parse_date("2026-02-30"), None);
        assert_eq!(
            Timestamp(1_795_000_000_123).to_rfc3339(),
            "2026-11-18T11:06:40.123Z"
        );
    }
}

/// A person the store holds personal data of (design §10): a chat partner, or a user of the bot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Subject {
    /// A chat partner: the conversation `conv-{bot}-{chat}`.
    Chat {
        /// The bot.
        bot: BotId,
        /// The chat.
        chat_id: i64,
    },
    /// A user of the bot: `user-{bot}-{user}`, and their private chat (chat id = user id).
    User {
        /// The bot.
        bot: BotId,
        /// The user.
        user_id: i64,
    },
}

/// Which kind of subject an erasure mark is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// A chat partner.
    Chat,
    /// A user.
    User,
}

impl SubjectKind {
    /// `chat` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Chat => "chat",
            SubjectKind::User => "user",
        }
    }
}

impl Subject {
    /// The bot.
    pub fn bot(&self) -> &BotId {
        match self {
            Subject::Chat { bot, .. } | Subject::User { bot, .. } => bot,
        }
    }

    /// The chat or user id.
    pub fn id(&self) -> i64 {
        match self {
            Subject::Chat { chat_id, .. } => *chat_id,
            Subject::User { user_id, .. } => *user_id,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> SubjectKind {
        match self {
            Subject::Chat { .. } => SubjectKind::Chat,
            Subject::User { .. } => SubjectKind::User,
        }
    }

    /// The stream its erasure is appended to.
    pub fn stream(&self) -> StreamId {
        match self {
            Subject::Chat { bot, chat_id } => StreamId::conversation(bot, *chat_id),
            Subject::User { bot, user_id } => StreamId::user(bot, *user_id),
        }
    }

    /// The streams whose keys its erasure destroys: the chat's; a user's and their private
    /// chat's.
    pub fn key_streams(&self) -> Vec<StreamId> {
        match self {
            Subject::Chat { bot, chat_id } => vec![StreamId::conversation(bot, *chat_id)],
            Subject::User { bot, user_id } => vec![
                StreamId::user(bot, *user_id),
                StreamId::conversation(bot, *user_id),
            ],
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Chat { bot, chat_id } => write!(f, "chat {chat_id} of bot {bot}"),
            Subject::User { bot, user_id } => write!(f, "user {user_id} of bot {bot}"),
        }
    }
}

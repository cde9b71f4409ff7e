//! The times the old bot wrote: seconds since the epoch, or RFC 3339 with or without a zone.

use serde_json::Value;

use crate::ids::Timestamp;

/// of JavaScript dates, ±275 760 years): beyond it a `ts` is garbage, not a time.
/// Largest time accepted from a legacy file, in milliseconds either side of the epoch (the range
pub(super) const LEGACY_TIME_ABS_MAX_MS: i64 = 8_640_000_000_000_000;

/// When a legacy `ts` (or `last_activity`) happened: a number is seconds since the epoch (the old
/// bot's `time.time()`, with or without a fraction); a string is RFC 3339, and a date-time
/// without a zone (Python's naive `isoformat()`) is taken as UTC. `None` for anything else, and
/// the importer then uses the time of the import.
pub fn legacy_time(ts: &Value) -> Option<Timestamp> {
    let ms = match ts {
        Value::Number(number) => match number.as_i64() {
            Some(seconds) => seconds.checked_mul(1000)?,
            None => {
                let ms = (number.as_f64()? * 1000.0).round();
                if !ms.is_finite() || ms.abs() > LEGACY_TIME_ABS_MAX_MS as f64 {
                    return None;
                }
                ms as i64
            }
        },
        Value::String(text) => parse_rfc3339(text)?.0,
        _ => return None,
    };
    (ms.abs() <= LEGACY_TIME_ABS_MAX_MS).then_some(Timestamp(ms))
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fraction][Z|±HH:MM]`; no zone means UTC. Fractions beyond
/// milliseconds are cut.
pub(super) fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let bytes = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = bytes.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    // The date: fixed width, checked byte by byte so that `parse_date` sees only digits.
    digits(0, 4)?;
    digits(5, 2)?;
    digits(8, 2)?;
    if bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') {
        return None;
    }
    let days = Timestamp::parse_date(text.get(..10)?)?;
    if !matches!(bytes.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if bytes.get(13) != Some(&b':') || bytes.get(16) != Some(&b':') {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Everything up to here is ASCII, so byte 19 is a char boundary.
    let mut rest = text.get(19..)?;
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        for (place, digit) in fraction.bytes().take(3).take(len).enumerate() {
            millis += i64::from(digit - b'0') * [100, 10, 1][place];
        }
        rest = &fraction[len..];
    }
    let offset_minutes = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let zone_at = text.len() - rest.len();
            let sign = match bytes.get(zone_at) {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            let (hours, minutes) = (digits(zone_at + 1, 2)?, digits(zone_at + 4, 2)?);
            if rest.len() != 6
                || bytes.get(zone_at + 3) != Some(&b':')
                || hours > 23
                || minutes > 59
            {
                return None;
            }
            sign * (hours * 60 + minutes)
        }
    };
    let seconds_of_day = hour * 3600 + minute * 60 + second;
    Some(Timestamp(
        days * 86_400_000 + seconds_of_day * 1000 + millis - offset_minutes * 60_000,
    ))
}

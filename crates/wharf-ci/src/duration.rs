//! Durations as people write them in pipeline files: `90`, `60s`, `5m`, `1h30m`, `7d`, `500ms`.

use std::time::Duration;

/// Parses a duration: whole numbers with units `ms`, `s`, `m`, `h`, `d` (a bare number is
/// seconds), several of them added up.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty duration".into());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let not_a_duration = || format!("{text:?} is not a duration: use a number with ms, s, m, h or d, like 90s or 1h30m");
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let amount: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is not a duration: a unit needs a number before it"))?;
        rest = &rest[digits..];
        let letters = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_alphabetic()).len();
        let unit_ms = match &rest[..letters] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("{text:?} is not a duration: the last number has no unit")),
            _ => return Err(not_a_duration()),
        };
        rest = &rest[letters..];
        total_ms = amount
            .checked_mul(unit_ms)
            .and_then(|part| total_ms.checked_add(part))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

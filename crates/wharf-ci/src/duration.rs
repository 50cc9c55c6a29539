//! Durations as people write them in pipeline files: `90`, `60s`, `5m`, `1h30m`, `7d`.

use std::time::Duration;

/// Parses a duration: whole numbers with units `s`, `m`, `h`, `d` (a bare number is seconds),
/// several of them added up.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty duration".into());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("{text:?} is not a duration: use a number with s, m, h or d, like 90s or 1h30m")),
        };
        let amount: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a duration: a unit needs a number before it"))?;
        total = amount
            .checked_mul(unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{text:?} is not a duration: the last number has no unit"));
    }
    Ok(Duration::from_secs(total))
}

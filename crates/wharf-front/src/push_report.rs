//! Refusals inside a push, in git's own words.
//!
//! Once a client has sent its push, git prints no HTTP error body: a refused
//! `POST git-receive-pack` shows only `error: RPC failed; HTTP 413`. So when Wharf refuses a
//! push whose commands it has read (too large, not recorded), the front answers as
//! receive-pack would: `200` with a report-status that rejects every ref with the reason
//! (`ng refs/heads/main <reason>`), preceded by the reason as a progress message. Git then
//! prints `remote: Wharf: …` and `! [remote rejected] main -> main (…)` (issue 13, point 9).
//!
//! [`CommandReader`] picks the commands and capabilities out of the start of the request body
//! as it streams past; [`report`] writes the answer. Neither runs git.

/// The pkt-line payload limit of `side-band-64k` (65520 bytes a line, less the length and the
/// band byte).
const SIDE_BAND_64K_DATA: usize = 65515;
/// The payload limit of the older `side-band` (1000 bytes a line).
const SIDE_BAND_DATA: usize = 995;
/// The most of a request body kept to find its commands: 64 KiB holds about 500 ref updates;
/// a push with more is refused with an HTTP error instead of a report.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// What a push asked for, as far as a report needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushCommands {
    /// The refs it updates, in order.
    pub refs: Vec<String>,
    /// Payload bytes per side-band line, if the client asked for a side band.
    pub side_band: Option<usize>,
}

/// Reads the command list at the start of a `git-receive-pack` request body.
#[derive(Debug, Default)]
pub(crate) struct CommandReader {
    kept: Vec<u8>,
    commands: Option<PushCommands>,
    /// The start did not parse or did not fit: no report can be written.
    gave_up: bool,
}

impl CommandReader {
    /// Takes the next bytes of the (decompressed) request body.
    pub fn feed(&mut self, data: &[u8]) {
        if self.commands.is_some() || self.gave_up {
            return;
        }
        let room = MAX_COMMAND_BYTES.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
        match parse_commands(&self.kept) {
            Ok(Some(commands)) => {
                self.commands = Some(commands);
                self.kept = Vec::new();
            }
            Ok(None) if self.kept.len() < MAX_COMMAND_BYTES => {}
            Ok(None) | Err(()) => {
                self.gave_up = true;
                self.kept = Vec::new();
            }
        }
    }

    /// The commands, once the whole list has been read; `None` before, or if there were none.
    pub fn commands(&self) -> Option<&PushCommands> {
        self.commands.as_ref().filter(|commands| !commands.refs.is_empty())
    }
}

/// Parses pkt-lines up to the first flush: `Ok(None)` if more bytes are needed, `Err` if they
/// are not a command list.
fn parse_commands(bytes: &[u8]) -> Result<Option<PushCommands>, ()> {
    let mut rest = bytes;
    let mut refs = Vec::new();
    let mut side_band = None;
    loop {
        let Some(head) = rest.get(..4) else { return Ok(None) };
        let length = std::str::from_utf8(head).ok().and_then(|h| usize::from_str_radix(h, 16).ok()).ok_or(())?;
        if length == 0 {
            return Ok(Some(PushCommands { refs, side_band }));
        }
        if length < 4 {
            return Err(());
        }
        let Some(line) = rest.get(4..length) else { return Ok(None) };
        rest = &rest[length..];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let (command, capabilities) = match line.iter().position(|&b| b == 0) {
            Some(nul) => (&line[..nul], Some(&line[nul + 1..])),
            None => (line, None),
        };
        if let Some(capabilities) = capabilities {
            let capabilities = String::from_utf8_lossy(capabilities);
            let words: Vec<&str> = capabilities.split(' ').collect();
            side_band = if words.contains(&"side-band-64k") {
                Some(SIDE_BAND_64K_DATA)
            } else if words.contains(&"side-band") {
                Some(SIDE_BAND_DATA)
            } else {
                None
            };
        }
        let command = std::str::from_utf8(command).map_err(|_| ())?;
        if command.starts_with("shallow ") {
            continue;
        }
        match command.splitn(3, ' ').collect::<Vec<_>>()[..] {
            [_old, _new, name] => refs.push(name.to_owned()),
            _ => return Err(()),
        }
    }
}

/// The body of a `git-receive-pack` answer that refuses every ref of `commands` for `reason`.
pub(crate) fn report(commands: &PushCommands, reason: &str) -> Vec<u8> {
    // One line each: git ends a status at the line's end.
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut status = pkt_line(b"unpack ok\n");
    for name in &commands.refs {
        status.extend(pkt_line(format!("ng {name} {reason}\n").as_bytes()));
    }
    status.extend_from_slice(b"0000");
    let Some(max) = commands.side_band else {
        return status;
    };
    let mut out = Vec::new();
    for (band, data) in [(2u8, format!("Wharf: {reason}\n").into_bytes()), (1u8, status)] {
        for piece in data.chunks(max) {
            let mut payload = vec![band];
            payload.extend_from_slice(piece);
            out.extend(pkt_line(&payload));
        }
    }
    out.extend_from_slice(b"0000");
    out
}

/// One pkt-line: four hex digits of length (including themselves), then the payload.
pub(crate) fn pkt_line(payload: &[u8]) -> Vec<u8> {
    let mut line = format!("{:04x}", payload.len() + 4).into_bytes();
    line.extend_from_slice(payload);
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "0000000000000000000000000000000000000000";
    const NEW: &str = "1111111111111111111111111111111111111111";

    fn body(capabilities: &str) -> Vec<u8> {
        let mut body = pkt_line(format!("{OLD} {NEW} refs/heads/main\0{capabilities}\n").as_bytes());
        body.extend(pkt_line(format!("{NEW} {OLD} refs/heads/gone\n").as_bytes()));
        body.extend_from_slice(b"0000PACK...");
        body
    }

    #[test]
    fn commands_are_read_in_pieces_of_any_size() {
        let body = body("report-status side-band-64k agent=git/2.47");
        for step in [1, 7, body.len()] {
            let mut reader = CommandReader::default();
            for piece in body.chunks(step) {
                reader.feed(piece);
            }
            let commands = reader.commands().expect("the list is complete");
            assert_eq!(commands.refs, ["refs/heads/main", "refs/heads/gone"]);
            assert_eq!(commands.side_band, Some(SIDE_BAND_64K_DATA));
        }
    }

    #[test]
    fn a_probe_or_garbage_gives_no_commands() {
        let mut probe = CommandReader::default();
        probe.feed(b"0000");
        assert_eq!(probe.commands(), None);
        let mut garbage = CommandReader::default();
        garbage.feed(b"GET / HTTP/1.1\r\n");
        assert_eq!(garbage.commands(), None);
    }

    #[test]
    fn the_report_rejects_every_ref_with_a_one_line_reason() {
        let commands = PushCommands {
            refs: vec!["refs/heads/main".into()],
            side_band: None,
        };
        assert_eq!(
            report(&commands, "too\nlarge"),
            b"000eunpack ok\n0021ng refs/heads/main too large\n0000".to_vec()
        );
        let banded = report(&PushCommands { side_band: Some(SIDE_BAND_DATA), ..commands }, "no");
        assert!(banded.starts_with(b"000f\x02Wharf: no\n"), "{:?}", String::from_utf8_lossy(&banded));
        assert!(banded.ends_with(b"0000"));
    }
}

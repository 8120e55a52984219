//! Reads the Server-Sent Events of `POST /v1/boxes/{id}/exec/stream` as they arrive: bytes in,
//! `(event, data)` pairs out, comments (keep-alives) skipped.

/// An incremental reader of one event stream.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// Bytes of a line not yet ended.
    pending: Vec<u8>,
    /// The event's name so far.
    event: String,
    /// The event's data lines so far.
    data: Vec<String>,
}

/// The most bytes one line may hold (an output chunk is base64 of boxd's reads, far less).
const MAX_LINE: usize = 4 * 1024 * 1024;

impl Events {
    /// Feeds `bytes`, returning the events they complete; an error when a line grows past
    /// [`MAX_LINE`].
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut done = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.pending.len() >= MAX_LINE {
                    return Err("an event stream line is too long".into());
                }
                self.pending.push(b);
                continue;
            }
            let mut line = String::from_utf8_lossy(&self.pending).into_owned();
            self.pending.clear();
            if line.ends_with('\r') {
                line.pop();
            }
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    let data = std::mem::take(&mut self.data).join("\n");
                    done.push((if event.is_empty() { "message".to_owned() } else { event }, data));
                }
            } else if line.starts_with(':') {
                // A comment: the stream's keep-alive.
            } else {
                let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => value.clone_into(&mut self.event),
                    "data" => self.data.push(value.to_owned()),
                    _ => {}
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::Events;

    #[test]
    fn events_split_across_reads_come_out_whole() {
        let mut events = Events::default();
        assert!(events.feed(b": keep-alive\n\nevent: start\nda").unwrap().is_empty());
        let out =
            events.feed(b"ta: {\"pid\":7}\n\nevent: stdout\r\ndata: {\"data\":\"NDIK\"}\r\n\r\n").unwrap();
        assert_eq!(
            out,
            vec![
                ("start".to_owned(), "{\"pid\":7}".to_owned()),
                ("stdout".to_owned(), "{\"data\":\"NDIK\"}".to_owned())
            ]
        );
    }
}

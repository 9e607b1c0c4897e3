//! A Server-Sent Events frame parser (WHATWG event-stream rules) that accepts arbitrary chunk
//! boundaries, including ones inside a line or a UTF-8 sequence.

/// One dispatched event: its `event:` name (default `message`) and its joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    pub event: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of an incomplete line.
    pending: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    /// A `\r` ended the last chunk: a `\n` starting the next one belongs to it.
    after_cr: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk and returns the events completed by it.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseFrame> {
        let mut frames = Vec::new();
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' => self.end_line(&mut frames),
                b'\r' => {
                    self.end_line(&mut frames);
                    self.after_cr = true;
                }
                _ => self.pending.push(byte),
            }
        }
        frames
    }

    /// Drops a partially received event (after the connection ended).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    fn end_line(&mut self, frames: &mut Vec<SseFrame>) {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
        if line.is_empty() {
            // A blank line dispatches; an event without data is dropped.
            let event = self.event.take();
            if !self.data.is_empty() {
                frames.push(SseFrame {
                    event: event.unwrap_or_else(|| "message".into()),
                    data: std::mem::take(&mut self.data).join("\n"),
                });
            }
            return;
        }
        if line.starts_with(':') {
            return; // comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {} // id, retry and unknown fields are not used by Marathon
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_split_anywhere() {
        let stream =
            "event: a\ndata: {\"x\":\ndata: 1}\n\n: keep-alive\n\nevent: b\r\ndata: é\r\n\r\ndata: plain\n\n";
        let bytes = stream.as_bytes();
        for split in 0..bytes.len() {
            let mut parser = SseParser::new();
            let mut frames = parser.push(&bytes[..split]);
            frames.extend(parser.push(&bytes[split..]));
            assert_eq!(
                frames,
                vec![
                    SseFrame {
                        event: "a".into(),
                        data: "{\"x\":\n1}".into()
                    },
                    SseFrame {
                        event: "b".into(),
                        data: "é".into()
                    },
                    SseFrame {
                        event: "message".into(),
                        data: "plain".into()
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn byte_by_byte_and_field_without_space() {
        let mut parser = SseParser::new();
        let mut frames = Vec::new();
        for b in b"event:x\ndata:1\n\n" {
            frames.extend(parser.push(&[*b]));
        }
        assert_eq!(
            frames,
            vec![SseFrame {
                event: "x".into(),
                data: "1".into()
            }]
        );
    }
}

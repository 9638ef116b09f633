//! A query socket request: one line, parsed (pure; the bounds on reading it are `query`'s).
//!
//! ```text
//! containers\n            the caller's containers (as GET /api/containers?history=0)
//! containers history\n    the same with each container's history
//! container <ID>\n        one container: {"container": {...}}
//! ```

/// Bytes a request may hold, its `\n` included.
pub const MAX_REQUEST_BYTES: usize = 1024;

/// What a caller asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Its containers; with their history points or not.
    Containers { history: bool },
    /// One container by id.
    Container(String),
}

/// Why a request is refused: the text of its `error: ...` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("request too long (at most {MAX_REQUEST_BYTES} bytes with its newline)")]
    TooLong,
    #[error("no request line in time")]
    NoNewline,
    #[error("request is not UTF-8")]
    NotUtf8,
    #[error("request holds control characters")]
    ControlCharacter,
    #[error("unknown request (containers, containers history, container ID)")]
    Unknown,
}

/// Parse one request line, `\n` included.
pub fn parse(line: &[u8]) -> Result<Request, BadRequest> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(BadRequest::TooLong);
    }
    let Some(text) = line.strip_suffix(b"\n") else {
        return Err(BadRequest::NoNewline);
    };
    let text = std::str::from_utf8(text).map_err(|_| BadRequest::NotUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(BadRequest::ControlCharacter);
    }
    let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    match words.as_slice() {
        ["containers"] => Ok(Request::Containers { history: false }),
        ["containers", "history"] => Ok(Request::Containers { history: true }),
        ["container", id] => Ok(Request::Container((*id).to_string())),
        _ => Err(BadRequest::Unknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_requests() {
        assert_eq!(
            parse(b"containers\n"),
            Ok(Request::Containers { history: false })
        );
        assert_eq!(
            parse(b"containers history\n"),
            Ok(Request::Containers { history: true })
        );
        assert_eq!(
            parse(b"container apptheus-exec_42\n"),
            Ok(Request::Container("apptheus-exec_42".into()))
        );
        // Spaces between words are not counted.
        assert_eq!(
            parse(b"  container   x_1 \n"),
            Ok(Request::Container("x_1".into()))
        );
        // Any text is an id: one that names nothing is answered as not found.
        assert_eq!(
            parse("container é_1\n".as_bytes()),
            Ok(Request::Container("é_1".into()))
        );
    }

    #[test]
    fn bad_requests() {
        assert_eq!(parse(b"containers"), Err(BadRequest::NoNewline));
        assert_eq!(parse(b""), Err(BadRequest::NoNewline));
        assert_eq!(parse(b"\n"), Err(BadRequest::Unknown));
        assert_eq!(parse(b"metrics\n"), Err(BadRequest::Unknown));
        assert_eq!(parse(b"Containers\n"), Err(BadRequest::Unknown));
        assert_eq!(parse(b"containers all\n"), Err(BadRequest::Unknown));
        assert_eq!(parse(b"container\n"), Err(BadRequest::Unknown));
        assert_eq!(parse(b"container a b\n"), Err(BadRequest::Unknown));
        assert_eq!(parse(b"containers\r\n"), Err(BadRequest::ControlCharacter));
        assert_eq!(parse(b"container\ta\n"), Err(BadRequest::ControlCharacter));
        assert_eq!(
            parse(b"container \x1b[2J\n"),
            Err(BadRequest::ControlCharacter)
        );
        assert_eq!(parse(b"container \xff\n"), Err(BadRequest::NotUtf8));
        // A newline inside: the line ends at the first one (the reader stops there), so a
        // second one is a control character of the first line.
        assert_eq!(parse(b"containers\n\n"), Err(BadRequest::ControlCharacter));
    }

    #[test]
    fn the_size_bound_counts_the_newline() {
        let id = "a".repeat(MAX_REQUEST_BYTES - "container \n".len());
        let fits = format!("container {id}\n");
        assert_eq!(fits.len(), MAX_REQUEST_BYTES);
        assert_eq!(parse(fits.as_bytes()), Ok(Request::Container(id.clone())));
        let over = format!("container {id}a\n");
        assert_eq!(parse(over.as_bytes()), Err(BadRequest::TooLong));
    }

    #[test]
    fn error_lines_are_one_line_each() {
        for e in [
            BadRequest::TooLong,
            BadRequest::NoNewline,
            BadRequest::NotUtf8,
            BadRequest::ControlCharacter,
            BadRequest::Unknown,
        ] {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}

//! What reaches a terminal. Container ids, user names, job ids and paths come from users: a
//! control character in one (an escape sequence) could rewrite the screen or the title, so
//! each is shown escaped.

/// `text` with every control character written as its escape (`\u{1b}`), so nothing a user
/// named can act on the terminal.
pub fn safe(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Whether to colour: stdout (or stderr, for `which`) is a terminal and `NO_COLOR` is unset or
/// empty (<https://no-color.org>).
pub fn colour(fd: impl std::io::IsTerminal) -> bool {
    fd.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(safe("slurm_42"), "slurm_42");
        assert_eq!(safe("a\u{1b}]0;owned\u{7}b"), "a\\u{1b}]0;owned\\u{7}b");
        assert_eq!(safe("x\ny"), "x\\ny");
        assert!(!safe("\u{9b}31m").chars().any(char::is_control));
    }
}

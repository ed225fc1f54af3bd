//! Channel permission patterns: `*` matches any run of characters (even none);
//! nothing else is special.

/// True when `name` matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    // Greedy matching with backtracking to the last `*`: linear in practice and
    // never recursive, so a hostile pattern cannot blow the stack.
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What a connection may subscribe or publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    /// Anything.
    All,
    /// Channels matching one of these patterns; empty = nothing.
    Patterns(Vec<String>),
}

impl Permission {
    /// True when `channel` is allowed.
    pub fn allows(&self, channel: &str) -> bool {
        match self {
            Self::All => true,
            Self::Patterns(patterns) => patterns.iter().any(|p| matches(p, channel)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_any_run() {
        assert!(matches("chat:*", "chat:lobby"));
        assert!(matches("chat:*", "chat:"));
        assert!(!matches("chat:*", "chats"));
        assert!(matches("user:alice", "user:alice"));
        assert!(!matches("user:alice", "user:alicex"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("*:*", "a:b"));
        assert!(!matches("chat?", "chat1"), "? is not special");
        assert!(matches("chat?", "chat?"));
        assert!(matches("a**", "abc"));
    }
}

//! The one pattern language of topics and tools: `*` matches any run of characters (none
//! included), everything else matches itself. History rules, access rules and token grants all
//! use it.

/// Whether `pattern` matches `name`, in O(pattern x name): on a mismatch, go back to just after
/// the last `*` and let it swallow one more character (no exponential backtracking).
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn star_matches_any_run() {
        assert!(glob("chat:*", "chat:1"));
        assert!(glob("chat:*", "chat:"));
        assert!(!glob("chat:*", "chat"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXbY"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exact2"));
        assert!(!glob("exact", "exac"));
        // Long runs of stars stay linear.
        let name = "a".repeat(10_000);
        assert!(!glob(&format!("{}b", "*a".repeat(100)), &name));
    }
}

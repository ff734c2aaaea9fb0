//! The patterns a request names its output files with, matched the same
//! way by the host (which checks what the agent sends) and the agent
//! (which picks the files).
//!
//! A pattern is a path relative to the working directory, `/`-separated.
//! In a component, `*` matches any run of characters and `?` one
//! character; a whole component `**` matches any number of directories,
//! none included. Nothing else is special: `out.csv` is that file.

/// The most wildcards one pattern may hold, so that matching stays cheap.
pub const MAX_WILDCARDS: usize = 16;
/// The longest pattern.
pub const MAX_PATTERN_BYTES: usize = 256;

/// Why `pattern` cannot name output files, if it cannot.
pub fn check(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "an output pattern has 1 to {MAX_PATTERN_BYTES} bytes: {pattern:?}"
        ));
    }
    if pattern.starts_with('/') || pattern.split('/').any(|c| c == "..") {
        return Err(format!(
            "an output pattern is relative to the working directory, without `..`: {pattern:?}"
        ));
    }
    if pattern.contains('\0') {
        return Err(format!("an output pattern has a NUL byte: {pattern:?}"));
    }
    if pattern.chars().filter(|c| matches!(c, '*' | '?')).count() > MAX_WILDCARDS {
        return Err(format!(
            "an output pattern has at most {MAX_WILDCARDS} wildcards: {pattern:?}"
        ));
    }
    Ok(())
}

/// Whether `path` (relative, `/`-separated) matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = components(pattern).collect();
    let path: Vec<&str> = components(path).collect();
    !path.is_empty() && components_match(&pattern, &path)
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

fn components_match(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| components_match(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((name, others)) => {
                let pattern: Vec<char> = first.chars().collect();
                let name: Vec<char> = name.chars().collect();
                component_matches(&pattern, &name) && components_match(rest, others)
            }
            None => false,
        },
    }
}

/// Wildcard matching in one component, without backtracking blow-up: the
/// last `*` seen is the only place to retry from.
fn component_matches(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut retry: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                retry = Some((p, n));
                p += 1;
            }
            Some('?') => {
                p += 1;
                n += 1;
            }
            Some(c) if *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match retry {
                Some((star, at)) => {
                    p = star + 1;
                    n = at + 1;
                    retry = Some((star, at + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_documented() {
        for (pattern, path) in [
            ("out.csv", "out.csv"),
            ("./out.csv", "out.csv"),
            ("*.png", "plot.png"),
            ("*.png", ".hidden.png"),
            ("plot?.png", "plot1.png"),
            ("data/*.csv", "data/a.csv"),
            ("**/*.txt", "a.txt"),
            ("**/*.txt", "sub/dir/a.txt"),
            ("sub/**", "sub/x/y"),
            ("*", "anything"),
            ("a*b*c", "aXbYbZc"),
        ] {
            assert!(matches(pattern, path), "{pattern} {path}");
        }
        for (pattern, path) in [
            ("*.png", "sub/plot.png"),
            ("out.csv", "out.csv.bak"),
            ("plot?.png", "plot10.png"),
            ("data/*.csv", "data/deeper/a.csv"),
            ("a*b*c", "aXbYbZ"),
            ("*", ""),
        ] {
            assert!(!matches(pattern, path), "{pattern} {path}");
        }
    }

    #[test]
    fn only_relative_bounded_patterns_are_taken() {
        for good in ["out.csv", "**/*.png", "a/b/c"] {
            assert!(check(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_PATTERN_BYTES + 1);
        let wild = "*".repeat(MAX_WILDCARDS + 1);
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "a\0b", &long, &wild] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }
}

//! Whether a program's output is the expected one, and where they first
//! differ: the comparison modes judges use.
//!
//! | mode | equal when |
//! |---|---|
//! | `exact` | byte for byte |
//! | `lines` | line by line, ignoring whitespace at the end of each line and blank lines at the end (most judges' default) |
//! | `tokens` | the whitespace-separated tokens are the same |
//! | `float` | as `tokens`, but tokens that are both numbers may differ within an absolute or a relative tolerance |
//!
//! Outputs are bytes: a program may print anything. Excerpts in a
//! [`Difference`] are decoded lossily.

pub use runner_wire::Difference;

/// How outputs are compared (a checker program is the judge's business,
/// see [`super`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Comparison {
    Exact,
    Lines,
    Tokens,
    /// Numbers within `absolute` of each other, or within `relative` times
    /// the expected number, are equal.
    Float {
        absolute: f64,
        relative: f64,
    },
}

/// Bytes of an excerpt on each side.
const EXCERPT: usize = 40;
const END: &str = "(end of output)";

/// `Ok` when `actual` is `expected` under `comparison`, else where they
/// first differ.
pub fn compare(comparison: Comparison, expected: &[u8], actual: &[u8]) -> Result<(), Difference> {
    match comparison {
        Comparison::Exact => exact(expected, actual),
        Comparison::Lines => lines(expected, actual),
        Comparison::Tokens => tokens(expected, actual, |a, b| a == b),
        Comparison::Float { absolute, relative } => tokens(expected, actual, |want, got| {
            want == got || numbers_close(want, got, absolute, relative)
        }),
    }
}

fn exact(expected: &[u8], actual: &[u8]) -> Result<(), Difference> {
    let Some(at) = first_difference(expected, actual) else {
        return Ok(());
    };
    let (line, column) = position(actual, at);
    Err(Difference {
        line,
        column,
        expected: excerpt_at(expected, at),
        actual: excerpt_at(actual, at),
    })
}

fn lines(expected: &[u8], actual: &[u8]) -> Result<(), Difference> {
    let want = trimmed_lines(expected);
    let got = trimmed_lines(actual);
    for i in 0..want.len().max(got.len()) {
        let (w, g) = (want.get(i), got.get(i));
        if w == g {
            continue;
        }
        let column = match (w, g) {
            (Some(w), Some(g)) => first_difference(w, g).unwrap_or(0),
            _ => 0,
        };
        let show =
            |line: Option<&&[u8]>| line.map_or_else(|| END.to_string(), |l| window(l, column));
        return Err(Difference {
            line: i + 1,
            column: column + 1,
            expected: show(w),
            actual: show(g),
        });
    }
    Ok(())
}

/// The lines of `text` without the whitespace at their ends, and without
/// the blank lines at the end of the text.
fn trimmed_lines(text: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').map(trim_end).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

fn trim_end(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &line[..end]
}

fn tokens(
    expected: &[u8],
    actual: &[u8],
    equal: impl Fn(&[u8], &[u8]) -> bool,
) -> Result<(), Difference> {
    let want: Vec<(usize, &[u8])> = tokenize(expected).collect();
    let got: Vec<(usize, &[u8])> = tokenize(actual).collect();
    for i in 0..want.len().max(got.len()) {
        match (want.get(i), got.get(i)) {
            (Some((_, w)), Some((_, g))) if equal(w, g) => continue,
            (w, g) => {
                // Where in the program's output: its token, or its end.
                let at = g.map_or(actual.len(), |(at, _)| *at);
                let (line, column) = position(actual, at);
                let show = |token: Option<&(usize, &[u8])>| {
                    token.map_or_else(|| END.to_string(), |(_, t)| lossy(t))
                };
                return Err(Difference {
                    line,
                    column,
                    expected: show(w),
                    actual: show(g),
                });
            }
        }
    }
    Ok(())
}

/// The whitespace-separated tokens of `text`, with their offsets.
fn tokenize(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < text.len() && text[at].is_ascii_whitespace() {
            at += 1;
        }
        if at == text.len() {
            return None;
        }
        let start = at;
        while at < text.len() && !text[at].is_ascii_whitespace() {
            at += 1;
        }
        Some((start, &text[start..at]))
    })
}

/// Two tokens that are both numbers and within a tolerance of each other,
/// as testlib's `doubleCompare` decides: within `absolute`, or within
/// `relative` times the expected value. A NaN only matches a NaN, an
/// infinity only itself.
fn numbers_close(expected: &[u8], actual: &[u8], absolute: f64, relative: f64) -> bool {
    let number = |token: &[u8]| std::str::from_utf8(token).ok()?.parse::<f64>().ok();
    let (Some(want), Some(got)) = (number(expected), number(actual)) else {
        return false;
    };
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    if want.is_infinite() || got.is_infinite() {
        return want == got;
    }
    let error = (want - got).abs();
    error <= absolute || error <= relative * want.abs()
}

/// The index of the first byte where `a` and `b` differ (the shorter one's
/// length if one is a prefix of the other), or `None` if they are equal.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Line and column (from 1) of byte `at` of `text`.
fn position(text: &[u8], at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(at, |nl| at - nl - 1)
        + 1;
    (line, column)
}

/// A short piece of the line of `text` that holds byte `at`, or
/// `(end of output)` if `text` ends before it.
fn excerpt_at(text: &[u8], at: usize) -> String {
    if at >= text.len() {
        return END.into();
    }
    let start = text[..at]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |nl| nl + 1);
    let end = text[at..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(text.len(), |nl| at + nl);
    window(&text[start..end], at - start)
}

/// A short piece of `line` around byte `at`, from a little before it.
fn window(line: &[u8], at: usize) -> String {
    let start = at.saturating_sub(EXCERPT / 2).min(line.len());
    let end = (start + EXCERPT).min(line.len());
    lossy(&line[start..end])
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(comparison: Comparison, expected: &str, actual: &str) -> Option<Difference> {
        compare(comparison, expected.as_bytes(), actual.as_bytes()).err()
    }

    fn at(line: usize, column: usize, expected: &str, actual: &str) -> Option<Difference> {
        Some(Difference {
            line,
            column,
            expected: expected.into(),
            actual: actual.into(),
        })
    }

    #[test]
    fn exact_is_byte_for_byte() {
        assert_eq!(diff(Comparison::Exact, "1 2\n3\n", "1 2\n3\n"), None);
        assert_eq!(
            diff(Comparison::Exact, "1 2\n3\n", "1 2\n4\n"),
            at(2, 1, "3", "4")
        );
        assert_eq!(diff(Comparison::Exact, "1\n", "1"), at(1, 2, "1", END));
        assert_eq!(diff(Comparison::Exact, "1\n", "1 \n"), at(1, 2, "1", "1 "));
    }

    #[test]
    fn lines_ignore_whitespace_at_line_ends_and_blank_lines_at_the_end() {
        let lines = Comparison::Lines;
        assert_eq!(diff(lines, "1 2\n3\n", "1 2   \n3\r\n\n\n"), None);
        assert_eq!(diff(lines, "a\n", "a"), None);
        assert_eq!(diff(lines, "", "\n \n"), None);
        // Whitespace inside a line and blank lines in the middle count.
        assert_eq!(diff(lines, "1 2\n", "1  2\n"), at(1, 3, "1 2", "1  2"));
        assert_eq!(diff(lines, "1\n2\n", "1\n\n2\n"), at(2, 1, "2", ""));
        assert_eq!(diff(lines, "1\n2\n", "1\n"), at(2, 1, "2", END));
        assert_eq!(diff(lines, "1\n", "1\n2\n"), at(2, 1, END, "2"));
        assert_eq!(
            diff(lines, "the answer is 42\n", "the answer is 43\n"),
            at(1, 16, "the answer is 42", "the answer is 43")
        );
    }

    #[test]
    fn tokens_ignore_all_whitespace() {
        let tokens = Comparison::Tokens;
        assert_eq!(diff(tokens, "1 2\n3\n", "1\n2 \t 3"), None);
        assert_eq!(diff(tokens, "1 2 3", "1 2\n  4"), at(2, 3, "3", "4"));
        assert_eq!(diff(tokens, "1 2 3", "1 2"), at(1, 4, "3", END));
        assert_eq!(diff(tokens, "1.0", "1"), at(1, 1, "1.0", "1"));
    }

    #[test]
    fn floats_are_close_within_either_tolerance() {
        let float = Comparison::Float {
            absolute: 1e-6,
            relative: 1e-9,
        };
        assert_eq!(diff(float, "3.1415926", "3.14159265358979"), None);
        assert_eq!(diff(float, "0.5 yes", "5e-1 yes"), None);
        assert_eq!(diff(float, "1000000000", "1000000000.5"), None, "relative");
        assert_eq!(
            diff(float, "3.1415926", "3.1416"),
            at(1, 1, "3.1415926", "3.1416")
        );
        assert_eq!(diff(float, "1 yes", "1 no"), at(1, 3, "yes", "no"));
        assert_eq!(diff(float, "nan inf", "nan inf"), None);
        assert_eq!(diff(float, "inf", "1e308"), at(1, 1, "inf", "1e308"));
        assert_eq!(diff(float, "nan", "0"), at(1, 1, "nan", "0"));
    }

    #[test]
    fn excerpts_are_short_and_from_the_line_that_differs() {
        let long = format!("{}x{}\n", "a".repeat(100), "b".repeat(100));
        let other = format!("{}y{}\n", "a".repeat(100), "b".repeat(100));
        let d = diff(Comparison::Lines, &long, &other).unwrap();
        assert_eq!((d.line, d.column), (1, 101));
        assert_eq!(d.expected.len(), EXCERPT);
        assert_eq!(d.expected, format!("{}x{}", "a".repeat(20), "b".repeat(19)));
        assert_eq!(d.actual, format!("{}y{}", "a".repeat(20), "b".repeat(19)));
        let d = compare(Comparison::Exact, b"ok\n", b"o\xff\n").unwrap_err();
        assert_eq!(d.actual, "o\u{fffd}");
    }
}

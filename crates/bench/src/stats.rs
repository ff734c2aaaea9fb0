//! Percentiles of samples.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
}

/// p50, p95 (nearest rank), min and max; `None` for no values.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let index = (p / 100.0 * sorted.len() as f64).ceil() as usize;
        sorted[index.clamp(1, sorted.len()) - 1]
    };
    Some(Summary {
        n: sorted.len(),
        p50: rank(50.0),
        p95: rank(95.0),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(summarize(&[]), None);
        let one = summarize(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p95, one.min, one.max), (7.0, 7.0, 7.0, 7.0));
        let values: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        let s = summarize(&values).unwrap();
        assert_eq!(
            (s.n, s.p50, s.p95, s.min, s.max),
            (20, 10.0, 19.0, 1.0, 20.0)
        );
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.p50, s.p95), (2.0, 3.0));
    }
}

//! Statistics over repetitions: medians with min/max, percentiles of
//! latency samples, ratios to the bridge taken within each repetition.

use serde::Serialize;

/// Median, min and max of the values of one figure over the repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// Summary of the finite values in `xs`; None when there are none.
pub fn summarize(xs: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// The `p`-th percentile (0..=100) of samples, nearest-rank method: the
/// smallest value with at least p % of the samples at or below it.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// Ratios `value[r] / baseline[r]` for every repetition `r` that has both
/// (and a non-zero baseline). Pairing within a repetition cancels slow drifts
/// of the machine that interleaving exposes to every topology alike.
pub fn ratios_per_rep(values: &[(u32, f64)], baseline: &[(u32, f64)]) -> Vec<f64> {
    values
        .iter()
        .filter_map(|(rep, v)| {
            let b = baseline.iter().find(|(r, _)| r == rep)?.1;
            (b != 0.0 && b.is_finite() && v.is_finite()).then(|| v / b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_medians() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                median: 2.0,
                min: 1.0,
                max: 3.0,
                n: 3
            }
        );
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                median: 2.5,
                min: 1.0,
                max: 4.0,
                n: 4
            }
        );
        let s = summarize(&[7.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                median: 7.0,
                min: 7.0,
                max: 7.0,
                n: 1
            }
        );
    }

    #[test]
    fn non_finite_values_are_ignored() {
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[f64::NAN]).is_none());
        let s = summarize(&[f64::NAN, 5.0, f64::INFINITY, 1.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                median: 3.0,
                min: 1.0,
                max: 5.0,
                n: 2
            }
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), Some(50.0));
        assert_eq!(percentile(&xs, 99.0), Some(99.0));
        assert_eq!(percentile(&xs, 100.0), Some(100.0));
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
        assert_eq!(percentile(&[5.0, 1.0, 3.0], 50.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn ratios_pair_repetitions() {
        let ferry = [(0, 2.0), (1, 3.0), (2, 4.0), (3, 1.0)];
        let bridge = [(0, 1.0), (1, 2.0), (2, 0.0)];
        // rep 2 has a zero baseline and rep 3 none: both left out.
        assert_eq!(ratios_per_rep(&ferry, &bridge), vec![2.0, 1.5]);
        // Per-repetition pairing differs from the ratio of medians.
        let a = [(0, 10.0), (1, 1.0)];
        let b = [(0, 10.0), (1, 1.0)];
        let r = summarize(&ratios_per_rep(&a, &b)).unwrap();
        assert_eq!((r.min, r.median, r.max), (1.0, 1.0, 1.0));
    }
}

//! Medians with distribution-free confidence intervals, shared by the load
//! benches (the same method as `load_mask`'s summary).
#![allow(dead_code)]

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A 95 % confidence interval for the median of `v`: `[x(k), x(n-k+1)]`
/// (1-based order statistics) with the largest `k` for which
/// `P(Binomial(n, 1/2) < k) <= 2.5 %` (the sign-test interval; the whole
/// range when `n` is too small for one).
pub fn median_ci(v: &[f64]) -> (f64, f64) {
    let mut x = v.to_vec();
    x.sort_by(f64::total_cmp);
    let n = x.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut pj = 0.5f64.powi(n as i32);
    let mut tail = 0.0;
    let mut k = 0;
    for j in 0..n {
        if tail + pj > 0.025 {
            break;
        }
        tail += pj;
        k = j + 1;
        pj *= (n - j) as f64 / (j + 1) as f64;
    }
    if k == 0 {
        return (x[0], x[n - 1]);
    }
    (x[k - 1], x[n - k])
}

/// `median [lo, hi]` of `v`, formatted with `f`.
pub fn show(v: &[f64], f: impl Fn(f64) -> String) -> String {
    let (lo, hi) = median_ci(v);
    format!("{} [{}, {}]", f(median(v.to_vec())), f(lo), f(hi))
}

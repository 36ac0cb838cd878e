//! The reference `best_subset` is checked against: the most value any
//! subset of the items holds within the budget, by trying every subset.
//! Exponential, for small sets only, so it is no part of the crate's API:
//! the unit tests declare it under `cfg(test)`, and the power bench (which
//! races it against `best_subset`) includes this file by path.

use super::Watts;

/// The most value any subset of `items` fitting `budget` holds.
pub fn best_value_by_brute_force(budget: Watts, items: &[(Watts, u32)]) -> u64 {
    let mut best = 0;
    for mask in 0u32..(1 << items.len()) {
        let (mut w, mut v) = (0.0, 0u64);
        for (i, (iw, iv)) in items.iter().enumerate() {
            if mask & (1 << i) != 0 {
                w += iw.0;
                v += u64::from(*iv);
            }
        }
        if w <= budget.0 {
            best = best.max(v);
        }
    }
    best
}

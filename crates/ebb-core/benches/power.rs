//! The power-drop subset choice (a 0/1 knapsack over whole watts): 20 VMs
//! against brute force over all 2^20 subsets in the same run, and 1,000 VMs.
//! Plain `Instant`; the figures are for people, the target is printed.

use brute_force::best_value_by_brute_force;
use ebb_core::power::{best_subset, Watts};
use std::time::Instant;

/// The test reference, not part of ebb-core's API: shared by path.
#[path = "../src/power/brute_force.rs"]
mod brute_force;

fn items(n: usize, seed: u64) -> Vec<(Watts, u32)> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let w = 5 + (x >> 33) % 120;
            let v = 1 + (x >> 17) % 1000;
            (Watts(w as f64), v as u32)
        })
        .collect()
}

fn median_ms(mut f: impl FnMut(), runs: usize) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let twenty = items(20, 7);
    let budget = Watts(twenty.iter().map(|i| i.0 .0).sum::<f64>() * 0.4);
    let value = |c: &[usize]| c.iter().map(|&i| u64::from(twenty[i].1)).sum::<u64>();
    let dp = median_ms(|| drop(std::hint::black_box(best_subset(std::hint::black_box(budget), &twenty))), 200);
    let bf = median_ms(|| { std::hint::black_box(best_value_by_brute_force(std::hint::black_box(budget), &twenty)); }, 3);
    let same = value(&best_subset(budget, &twenty)) == best_value_by_brute_force(budget, &twenty);
    println!("power-drop subset, 20 VMs, budget {budget}: {dp:.3} ms; brute force over 2^20 subsets {bf:.1} ms; same value: {same}");
    for (n, budget) in [(1_000, 2_000.0), (1_000, 20_000.0)] {
        let many = items(n, 11);
        let ms = median_ms(|| drop(std::hint::black_box(best_subset(std::hint::black_box(Watts(budget)), &many))), 20);
        println!("power-drop subset, {n} VMs, budget {budget:.0} W: median {ms:.2} ms (target < 10 ms)");
    }
}

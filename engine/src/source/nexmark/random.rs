//! `java.util.Random`, bit for bit, and the Nexmark string helpers built on
//! it.
//!
//! Beam's Nexmark generator seeds a fresh `java.util.Random` with each
//! event's id and draws that event's fields from it, in a fixed order. Doing
//! the same here makes every event a pure function of its number (so any
//! range of events can be generated alone, after a restart, on any thread),
//! and with seed 0 reproduces the draws of Beam's generator exactly. The
//! generator is a 48-bit linear congruential generator: a multiply and an
//! add per draw, cheap enough that seeding one per event costs nothing.

/// The LCG's multiplier, addend and modulus mask (Java's constants).
const MULTIPLIER: u64 = 0x5_DEEC_E66D;
const ADDEND: u64 = 0xB;
const MASK: u64 = (1 << 48) - 1;

/// Draws [`JavaRandom::next_ints`] computes at once.
const JUMPS: usize = 8;

/// `(A_k, C_k)` with state_k = A_k · state_0 + C_k (mod 2^48), k = 1..=8:
/// the LCG `k` steps ahead, so that a run of draws does not wait on each
/// other.
const JUMP: [(u64, u64); JUMPS] = {
    let mut t = [(0u64, 0u64); JUMPS];
    let (mut a, mut c) = (MULTIPLIER, ADDEND);
    let mut k = 0;
    while k < JUMPS {
        t[k] = (a, c);
        a = a.wrapping_mul(MULTIPLIER) & MASK;
        c = c.wrapping_mul(MULTIPLIER).wrapping_add(ADDEND) & MASK;
        k += 1;
    }
    t
};

/// `java.util.Random`.
#[derive(Clone, Debug)]
pub struct JavaRandom {
    seed: u64,
}

impl JavaRandom {
    /// `new Random(seed)`.
    #[inline]
    pub fn new(seed: i64) -> Self {
        Self {
            seed: (seed as u64 ^ MULTIPLIER) & MASK,
        }
    }

    /// `next(bits)`: the top `bits` of the next 48-bit state.
    #[inline]
    fn next(&mut self, bits: u32) -> i32 {
        self.seed = self.seed.wrapping_mul(MULTIPLIER).wrapping_add(ADDEND) & MASK;
        // Java's `(int)(seed >>> (48 - bits))`: keep the low 32 bits.
        (self.seed >> (48 - bits)) as u32 as i32
    }

    /// `nextInt()`: any `int`.
    #[inline]
    pub fn next_int(&mut self) -> i32 {
        self.next(32)
    }

    /// `out.len()` (at most 8) calls of `nextInt()`, computed side by side.
    #[inline]
    pub fn next_ints(&mut self, out: &mut [i32]) {
        let s0 = self.seed;
        for (o, &(a, c)) in out.iter_mut().zip(&JUMP) {
            *o = ((a.wrapping_mul(s0).wrapping_add(c) & MASK) >> 16) as u32 as i32;
        }
        if let Some(&(a, c)) = JUMP.get(out.len().wrapping_sub(1)) {
            self.seed = a.wrapping_mul(s0).wrapping_add(c) & MASK;
        }
    }

    /// `nextInt(bound)`: uniform in `[0, bound)`. `bound` must be positive.
    #[inline]
    pub fn next_int_below(&mut self, bound: i32) -> i32 {
        debug_assert!(bound > 0);
        let mut r = self.next(31);
        let m = bound - 1;
        if bound & m == 0 {
            // A power of two: take the high bits.
            return ((i64::from(bound) * i64::from(r)) >> 31) as i32;
        }
        // Reject the values of the last, partial run of `bound` (Java's
        // overflow test, with its int arithmetic).
        let mut u = r;
        loop {
            r = u % bound;
            if u.wrapping_sub(r).wrapping_add(m) >= 0 {
                return r;
            }
            u = self.next(31);
        }
    }

    /// `nextLong()`.
    #[inline]
    pub fn next_long(&mut self) -> i64 {
        let hi = i64::from(self.next(32));
        let lo = i64::from(self.next(32));
        (hi << 32).wrapping_add(lo)
    }

    /// `nextDouble()`: uniform in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn next_double(&mut self) -> f64 {
        let hi = i64::from(self.next(26));
        let lo = i64::from(self.next(27));
        ((hi << 27) + lo) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Nexmark's `LongGenerator.nextLong(random, n)`: `[0, n)` for `n > 0`.
    #[inline]
    pub fn next_long_below(&mut self, n: i64) -> i64 {
        if n < i64::from(i32::MAX) {
            i64::from(self.next_int_below(n as i32))
        } else {
            // Nexmark's own (skewed) fallback, kept for fidelity.
            (self.next_long() % n).wrapping_abs()
        }
    }
}

/// Shortest string `next_string` makes.
const MIN_STRING_LENGTH: i32 = 3;

/// Nexmark's `nextString(random, maxLength)`: 3 to `max_len - 1` letters,
/// about one in 13 a space, trimmed; appended to `out`.
pub fn next_string(rng: &mut JavaRandom, max_len: i32, out: &mut Vec<u8>) {
    let start = out.len();
    push_letters(rng, max_len, b' ', out);
    // Java's `trim()`: drop the spaces at both ends.
    let s = &out[start..];
    let first = s.iter().position(|&b| b != b' ');
    match first {
        None => out.truncate(start),
        Some(first) => {
            let last = s.iter().rposition(|&b| b != b' ').unwrap_or(first);
            let (from, to) = (start + first, start + last + 1);
            out.copy_within(from..to, start);
            out.truncate(start + (to - from));
        }
    }
}

/// Nexmark's `nextString(random, maxLength, special)` (used in URLs): like
/// [`next_string`] with `special` instead of the space, not trimmed.
pub fn next_string_with(rng: &mut JavaRandom, max_len: i32, special: u8, out: &mut Vec<u8>) {
    push_letters(rng, max_len, special, out);
}

fn push_letters(rng: &mut JavaRandom, max_len: i32, special: u8, out: &mut Vec<u8>) {
    let len = MIN_STRING_LENGTH + rng.next_int_below(max_len - MIN_STRING_LENGTH);
    for _ in 0..len {
        if rng.next_int_below(13) == 0 {
            out.push(special);
        } else {
            out.push(b'a' + rng.next_int_below(26) as u8);
        }
    }
}

/// Nexmark's `nextExactString(random, length)`: `len` characters, six from
/// each `nextInt()`. Java computes `'a' + rnd % 26` on a signed `int`, so
/// negative draws give the characters `H` to `` ` `` too; kept as is.
#[inline]
pub fn next_exact_string(rng: &mut JavaRandom, len: usize, out: &mut Vec<u8>) {
    out.reserve(len);
    let mut left = len;
    // Full groups of six characters, up to eight draws at a time, made in a
    // local buffer (which nothing else can alias) and then appended.
    while left >= 6 {
        let draws = (left / 6).min(JUMPS);
        let mut ints = [0i32; JUMPS];
        rng.next_ints(&mut ints[..draws]);
        let mut chars = [0u8; 6 * JUMPS];
        for (&int, six) in ints[..draws].iter().zip(chars.chunks_exact_mut(6)) {
            // Two characters per step: `rnd % 676` names both (see `PAIRS`).
            let mut rnd = int;
            for pair in six.chunks_exact_mut(2) {
                pair.copy_from_slice(&PAIRS[(rnd % 676 + 675) as usize]);
                rnd /= 676;
            }
        }
        out.extend_from_slice(&chars[..6 * draws]);
        left -= 6 * draws;
    }
    if left > 0 {
        let mut rnd = rng.next_int();
        for _ in 0..left {
            out.push((i32::from(b'a') + rnd % 26) as u8);
            rnd /= 26;
        }
    }
}

/// The two characters Java's `nextExactString` makes from an `int` whose
/// remainder by 26² is `r` (index `r + 675`): with division truncating
/// toward zero, `rnd % 26 == r % 26` and `(rnd / 26) % 26 == r / 26`.
static PAIRS: [[u8; 2]; 1351] = {
    let mut t = [[0u8; 2]; 1351];
    let mut i = 0;
    while i < 1351 {
        let r = i as i32 - 675;
        t[i] = [(b'a' as i32 + r % 26) as u8, (b'a' as i32 + r / 26) as u8];
        i += 1;
    }
    t
};

/// How long `next_extra` makes the padding for a record of `current_size`
/// bytes to average `average` bytes: a length drawn uniformly in
/// `average - current ± 20%`. Draws from `rng` as Java does.
#[inline]
pub fn next_extra_len(rng: &mut JavaRandom, current_size: i32, average: i32) -> usize {
    if current_size > average {
        return 0;
    }
    let desired = average - current_size;
    // Java's Math.round, half up: floor(x + 0.5), which for x >= 0 is the
    // truncation `as` does.
    let delta = (f64::from(desired) * 0.2 + 0.5) as i32;
    let min = desired - delta;
    let size = min
        + if delta == 0 {
            0
        } else {
            rng.next_int_below(2 * delta)
        };
    size.max(0) as usize
}

/// Nexmark's `nextExtra(random, currentSize, averageSize)`: padding that
/// brings a record to `average` bytes on average; appended to `out`.
#[inline]
pub fn next_extra(rng: &mut JavaRandom, current_size: i32, average: i32, out: &mut Vec<u8>) {
    let len = next_extra_len(rng, current_size, average);
    next_exact_string(rng, len, out);
}

/// Nexmark's price: `round(10^(6u) * 100)` cents for a uniform `u`, so
/// prices spread evenly over magnitudes from $1 to $1,000,000.
#[inline]
pub fn next_price(rng: &mut JavaRandom) -> i64 {
    price_of(rng.next_double())
}

/// `round(10^(6u) * 100)`, as Java's `Math.round(Math.pow(10, 6u) * 100)`.
///
/// `pow` was the top cost of generating bids (40% of Nexmark q2). `10^x` is
/// computed as `e^(x ln 10)` instead, several times cheaper and within
/// about 3e-15 of `pow`'s correctly rounded value; that error can change
/// the rounded cents only when they are within 3e-7 (of 1e8 at most) of a
/// half, so there (about one price in a million) `pow` decides.
#[inline]
fn price_of(u: f64) -> i64 {
    let x = u * 6.0;
    let cents = (x * std::f64::consts::LN_10).exp() * 100.0;
    // `cents - trunc(cents)`, by a cast: `f64::fract` calls libm's `trunc`
    // on the baseline x86-64 target, a tenth of q2's time.
    let fraction = cents - (cents as i64) as f64;
    if (fraction - 0.5).abs() < 1e-6 {
        return pow_price(u);
    }
    (cents + 0.5) as i64
}

/// `price_of` for a column of draws (`u`, from `next_double`), appended
/// to `out`: the same prices, several at a time.
///
/// One price at a time, `exp` and the rounding after it were half of
/// generating a bid column (a long chain of dependent arithmetic per row).
/// Here, on CPUs with AVX2 or AVX-512, a loop of `pow10_times_100` does
/// four or eight rows per instruction (a table lookup and a polynomial, no
/// call), and marks the rare rows whose cents are within 1e-6 of a half,
/// which `pow` then decides as in `price_of`. Every path gives exactly the
/// prices `pow` would: the fast one is within 1e-15 of it (so it could round
/// differently only within 1e-7 of a half, far inside the 1e-6 band).
pub fn prices_of(draws: &[f64], out: &mut Vec<i64>) {
    let start = out.len();
    out.resize(start + draws.len(), 0);
    let dst = &mut out[start..];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { prices_avx512(draws, dst) };
            return fix_halves(draws, dst);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            unsafe { prices_avx2(draws, dst) };
            return fix_halves(draws, dst);
        }
    }
    for (o, &u) in dst.iter_mut().zip(draws) {
        *o = price_of(u);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn prices_avx512(draws: &[f64], out: &mut [i64]) {
    prices_or_marks(draws, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn prices_avx2(draws: &[f64], out: &mut [i64]) {
    prices_or_marks(draws, out);
}

/// Each row's price, or -1 (no price is negative) where the cents are too
/// near a half to round without `pow`. Written to vectorise: no branches,
/// no calls.
#[inline(always)]
fn prices_or_marks(draws: &[f64], out: &mut [i64]) {
    let table = pow10_table();
    for (o, &u) in out.iter_mut().zip(draws) {
        let cents = pow10_times_100(table, u * 6.0);
        let whole = cents.floor();
        let near_half = ((cents - whole) - 0.5).abs() < 1e-6;
        *o = if near_half {
            -1
        } else {
            whole as i64 + i64::from(cents - whole >= 0.5)
        };
    }
}

/// Replaces the marks `prices_or_marks` left with `pow`'s prices.
fn fix_halves(draws: &[f64], out: &mut [i64]) {
    for (o, &u) in out.iter_mut().zip(draws) {
        if *o < 0 {
            *o = pow_price(u);
        }
    }
}

/// `round(10^(6u) · 100)` as Java computes it, with `pow`.
#[cold]
fn pow_price(u: f64) -> i64 {
    (10f64.powf(u * 6.0) * 100.0 + 0.5) as i64
}

/// Table steps per unit of the exponent.
const POW10_STEPS: usize = 128;
/// Table entries: exponents 0 to 6.
const POW10_ENTRIES: usize = 6 * POW10_STEPS;

/// `10^x · 100` for `0 <= x < 6` (clamped into the table outside it): with
/// `x = j/128 + r` (`j = floor(128x)`; `j/128` and `r` exact, Sterbenz),
/// `10^x = T[j] · e^(r ln 10)`, where `T[j] = 10^(j/128)` comes from `pow`
/// once and `e^t` for `0 <= t < 0.018` is its Taylor series to `t^7`
/// (truncation below 3e-19), evaluated in Estrin's form so its terms do not
/// wait on each other. Within 1e-15 of `pow` (see the tests).
#[inline(always)]
fn pow10_times_100(table: &[f64; POW10_ENTRIES], x: f64) -> f64 {
    let j = ((x * POW10_STEPS as f64) as usize).min(POW10_ENTRIES - 1);
    let r = x - j as f64 * (1.0 / POW10_STEPS as f64);
    let t = r * std::f64::consts::LN_10;
    let t2 = t * t;
    let t4 = t2 * t2;
    let p = ((1.0 + t) + t2 * (1.0 / 2.0 + t * (1.0 / 6.0)))
        + t4 * ((1.0 / 24.0 + t * (1.0 / 120.0)) + t2 * (1.0 / 720.0 + t * (1.0 / 5040.0)));
    table[j] * 100.0 * p
}

/// `T[j] = 10^(j/128)`, each within an ulp (`pow`).
fn pow10_table() -> &'static [f64; POW10_ENTRIES] {
    static TABLE: std::sync::OnceLock<[f64; POW10_ENTRIES]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|j| 10f64.powf(j as f64 / POW10_STEPS as f64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by a JVM (`new java.util.Random(seed).nextXxx()`).
    #[test]
    fn matches_java_util_random() {
        assert_eq!(JavaRandom::new(0).next_int(), -1_155_484_576);
        assert_eq!(JavaRandom::new(42).next_int(), -1_170_105_035);
        assert_eq!(JavaRandom::new(0).next_long(), -4_962_768_465_676_381_896);
        assert_eq!(JavaRandom::new(0).next_double(), 0.730_967_787_376_657);
        // Bounded draws: a power of two takes the high bits, others reject.
        let mut r = JavaRandom::new(42);
        let first: Vec<i32> = (0..5).map(|_| r.next_int_below(10)).collect();
        assert_eq!(first, vec![0, 3, 8, 4, 0]);
        let mut r = JavaRandom::new(42);
        assert_eq!(r.next_int_below(1 << 4), 11);
        // A bound near 2^30 rejects some draws.
        let mut r = JavaRandom::new(-7);
        let big: Vec<i32> = (0..5).map(|_| r.next_int_below(1_000_000_007)).collect();
        assert_eq!(
            big,
            vec![577_934_662, 935_951_290, 445_645_583, 119_890_471, 314_447_087]
        );
    }

    #[test]
    fn bounded_draws_stay_in_range_and_cover_it() {
        let mut r = JavaRandom::new(7);
        let mut seen = [0u32; 13];
        for _ in 0..13_000 {
            let v = r.next_int_below(13);
            assert!((0..13).contains(&v));
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800 && c < 1200), "{seen:?}");
        for _ in 0..1000 {
            let v = r.next_long_below(5_000_000_000);
            assert!((0..5_000_000_000).contains(&v));
        }
    }

    #[test]
    fn strings_have_nexmarks_lengths_and_letters() {
        let mut r = JavaRandom::new(1);
        for _ in 0..1000 {
            let mut s = Vec::new();
            next_string(&mut r, 20, &mut s);
            assert!(s.len() <= 19, "{s:?}");
            assert!(s.first() != Some(&b' ') && s.last() != Some(&b' '));
            assert!(s.iter().all(|b| b.is_ascii_lowercase() || *b == b' '));
            let mut e = Vec::new();
            next_exact_string(&mut r, 37, &mut e);
            assert_eq!(e.len(), 37);
            assert!(e.iter().all(|b| (b'H'..=b'z').contains(b)), "{e:?}");
        }
    }

    /// Java's loop, one character at a time.
    fn exact_string_one_by_one(rng: &mut JavaRandom, mut len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut rnd, mut n) = (0i32, 0);
        while len > 0 {
            if n == 0 {
                rnd = rng.next_int();
                n = 6;
            }
            out.push((i32::from(b'a') + rnd % 26) as u8);
            rnd /= 26;
            n -= 1;
            len -= 1;
        }
        out
    }

    #[test]
    fn draws_computed_side_by_side_equal_draws_one_after_another() {
        for n in 0..=8 {
            let (mut a, mut b) = (JavaRandom::new(77), JavaRandom::new(77));
            let mut ints = vec![0; n];
            a.next_ints(&mut ints);
            let one_by_one: Vec<i32> = (0..n).map(|_| b.next_int()).collect();
            assert_eq!(ints, one_by_one);
            assert_eq!(a.next_int(), b.next_int(), "the state after {n} draws");
        }
    }

    #[test]
    fn exact_strings_two_characters_at_a_time_equal_javas_loop() {
        for seed in 0..200 {
            for len in [0, 1, 5, 6, 7, 12, 13, 48, 49, 54, 68, 81, 150] {
                let mut fast = Vec::new();
                next_exact_string(&mut JavaRandom::new(seed), len, &mut fast);
                assert_eq!(fast, exact_string_one_by_one(&mut JavaRandom::new(seed), len));
            }
        }
    }

    #[test]
    fn extra_padding_averages_to_the_target() {
        let mut r = JavaRandom::new(3);
        let n = 20_000;
        let total: usize = (0..n).map(|_| next_extra_len(&mut r, 32, 100)).sum();
        let avg = total as f64 / n as f64;
        assert!((avg - 68.0).abs() < 1.0, "{avg}");
        assert_eq!(next_extra_len(&mut r, 300, 100), 0);
        let mut s = Vec::new();
        next_extra(&mut r, 32, 100, &mut s);
        assert!((54..82).contains(&s.len()), "{}", s.len());
    }

    #[test]
    fn fast_prices_equal_pow_prices() {
        let mut rng = JavaRandom::new(20261124);
        for i in 0..2_000_000u32 {
            // Random doubles, and ones that put the cents right at a half.
            let u = if i % 2 == 0 {
                rng.next_double()
            } else {
                let cents = (rng.next_double() * 1e8).floor() + 0.5;
                (cents / 100.0).log10() / 6.0
            };
            let exact = (10f64.powf(u * 6.0) * 100.0 + 0.5) as i64;
            assert_eq!(price_of(u), exact, "u = {u}");
        }
    }

    /// What `prices_of`'s half band rests on: the table and polynomial are
    /// within 1e-15 (relative) of `pow` over the whole range and at every
    /// table boundary.
    #[test]
    fn table_powers_of_ten_are_within_1e15_of_pow() {
        let table = pow10_table();
        let mut rng = JavaRandom::new(-20261124);
        let boundaries = (0..POW10_ENTRIES).flat_map(|j| {
            let b = j as f64 / POW10_STEPS as f64;
            [
                b,
                f64::from_bits(b.to_bits().saturating_sub(1)),
                f64::from_bits(b.to_bits() + 1),
            ]
        });
        let worst = (0..1_000_000)
            .map(|_| rng.next_double() * 6.0)
            .chain(boundaries)
            .filter(|x| (0.0..6.0).contains(x))
            .map(|x| {
                let exact = 10f64.powf(x) * 100.0;
                ((pow10_times_100(table, x) - exact) / exact).abs()
            })
            .fold(0.0, f64::max);
        assert!(worst < 1e-15, "worst relative error {worst:e}");
    }

    /// Every path of `prices_of` (the one this CPU takes, and the portable
    /// one) gives `pow`'s prices, also for draws right at a half cent.
    #[test]
    fn column_prices_equal_pow_prices() {
        let mut rng = JavaRandom::new(7);
        let draws: Vec<f64> = (0..400_000)
            .map(|i| {
                if i % 2 == 0 {
                    rng.next_double()
                } else {
                    let cents = (rng.next_double() * (1e8 - 100.0)).floor() + 100.5;
                    (cents / 100.0).log10() / 6.0
                }
            })
            .chain([0.0, 1.0 - f64::EPSILON])
            .collect();
        let expected: Vec<i64> = draws.iter().map(|&u| pow_price(u)).collect();
        let mut out = vec![42];
        prices_of(&draws, &mut out);
        assert_eq!(out[0], 42);
        assert_eq!(out[1..], expected[..]);
        let mut portable = vec![0; draws.len()];
        prices_or_marks(&draws, &mut portable);
        fix_halves(&draws, &mut portable);
        assert_eq!(portable, expected);
    }

    #[test]
    fn prices_are_spread_over_six_magnitudes() {
        let mut r = JavaRandom::new(5);
        let mut prices: Vec<i64> = (0..10_000).map(|_| next_price(&mut r)).collect();
        prices.sort_unstable();
        assert!(prices[0] >= 100 && prices[9_999] <= 100_000_000);
        // Log-uniform: the median is near 10^3 dollars = 100,000 cents.
        let median = prices[5_000];
        assert!((50_000..200_000).contains(&median), "{median}");
    }
}

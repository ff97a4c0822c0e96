//! Drawing the next token from logits: penalties, temperature, top-k,
//! min-p, top-p, and a seeded generator so the same seed gives the same
//! text on the same engine and model.

use std::collections::HashMap;

use cortex_schemas::sampling::SamplingParams;

/// Resolved sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub seed: u64,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

/// How many recent tokens the repetition penalty looks at (llama.cpp's default).
const REPETITION_WINDOW: usize = 64;

impl SamplingConfig {
    /// Fills absent fields with the engine's defaults (temperature 1, no
    /// truncation, no penalties) and checks ranges.
    pub fn from_params(p: &SamplingParams, default_seed: u64) -> Result<Self, String> {
        let cfg = Self {
            temperature: p.temperature.unwrap_or(1.0) as f32,
            top_p: p.top_p.unwrap_or(1.0) as f32,
            top_k: p.top_k.unwrap_or(0) as usize,
            min_p: p.min_p.unwrap_or(0.0) as f32,
            seed: p.seed.unwrap_or(default_seed),
            repetition_penalty: p.repetition_penalty.unwrap_or(1.0) as f32,
            presence_penalty: p.presence_penalty.unwrap_or(0.0) as f32,
            frequency_penalty: p.frequency_penalty.unwrap_or(0.0) as f32,
        };
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        check(
            (0.0..=100.0).contains(&cfg.temperature),
            "temperature must be in [0, 100]",
        )?;
        check(
            cfg.top_p > 0.0 && cfg.top_p <= 1.0,
            "top_p must be in (0, 1]",
        )?;
        check((0.0..=1.0).contains(&cfg.min_p), "min_p must be in [0, 1]")?;
        check(
            cfg.repetition_penalty > 0.0 && cfg.repetition_penalty <= 10.0,
            "repetition_penalty must be in (0, 10]",
        )?;
        check(
            (-2.0..=2.0).contains(&cfg.presence_penalty),
            "presence_penalty must be in [-2, 2]",
        )?;
        check(
            (-2.0..=2.0).contains(&cfg.frequency_penalty),
            "frequency_penalty must be in [-2, 2]",
        )?;
        Ok(cfg)
    }

    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: 0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

/// A chosen token and, when asked, its log-probability and the best
/// alternatives (of the distribution after penalties, at temperature 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub token: u32,
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
}

/// Per-sequence sampler state.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: SplitMix64,
    /// Occurrences of each generated token.
    counts: HashMap<u32, u32>,
    /// Recent tokens (prompt and output) for the repetition penalty.
    recent: Vec<u32>,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig, prompt: &[u32]) -> Self {
        let start = prompt.len().saturating_sub(REPETITION_WINDOW);
        Self {
            rng: SplitMix64(cfg.seed),
            cfg,
            counts: HashMap::new(),
            recent: prompt[start..].to_vec(),
        }
    }

    /// Records a token that was emitted (sampled here or forced).
    pub fn accept(&mut self, token: u32) {
        *self.counts.entry(token).or_default() += 1;
        self.recent.push(token);
        if self.recent.len() > REPETITION_WINDOW {
            self.recent.remove(0);
        }
    }

    /// Takes `token` as sampled by an earlier run of the same generation
    /// (a resume on another replica): its penalties' history, and the one
    /// draw a sampled token costs, so a seeded run goes on as it would have.
    pub fn replay(&mut self, token: u32) {
        if self.cfg.temperature > 0.0 {
            let _ = self.rng.next_f32();
        }
        self.accept(token);
    }

    /// Picks the next token; `logprobs` asks for that many alternatives
    /// (`Some(0)`: only the chosen token's log-probability).
    pub fn sample(&mut self, logits: &mut [f32], logprobs: Option<usize>) -> Choice {
        self.apply_penalties(logits);
        let token = if self.cfg.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        let (logprob, top) = match logprobs {
            Some(n) => log_probs(logits, token, n),
            None => (None, Vec::new()),
        };
        self.accept(token);
        Choice {
            token,
            logprob,
            top,
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let rep = self.cfg.repetition_penalty;
        if rep != 1.0 {
            let mut seen: Vec<u32> = self.recent.clone();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / rep } else { *l * rep };
                }
            }
        }
        let (presence, frequency) = (self.cfg.presence_penalty, self.cfg.frequency_penalty);
        if presence != 0.0 || frequency != 0.0 {
            for (&t, &n) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= presence + frequency * n as f32;
                }
            }
        }
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let inv_t = 1.0 / self.cfg.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp()))
            .filter(|(_, p)| *p > 0.0)
            .collect();
        if cands.is_empty() {
            return argmax(logits);
        }
        let truncating = self.cfg.top_k > 0 || self.cfg.top_p < 1.0 || self.cfg.min_p > 0.0;
        if truncating {
            // Descending probability, ties by id so the order is stable;
            // the vocabulary is never sorted whole, only the head that
            // survives (see `top_p_head`).
            if self.cfg.top_k > 0 && self.cfg.top_k < cands.len() {
                cands.select_nth_unstable_by(self.cfg.top_k - 1, by_prob);
                cands.truncate(self.cfg.top_k);
            }
            if self.cfg.min_p > 0.0 {
                // The most likely token has weight 1 (logits shifted by their max).
                let floor = self.cfg.min_p;
                cands.retain(|c| c.1 >= floor);
            }
            if self.cfg.top_p < 1.0 {
                top_p_head(&mut cands, self.cfg.top_p);
            } else {
                cands.sort_unstable_by(by_prob);
            }
        }
        let total: f32 = cands.iter().map(|c| c.1).sum();
        let mut target = self.rng.next_f32() * total;
        for &(id, p) in &cands {
            target -= p;
            if target <= 0.0 {
                return id;
            }
        }
        cands[cands.len() - 1].0
    }
}

/// Descending weight, ties by id.
fn by_prob(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Keeps the smallest most-likely head of `cands` whose weight reaches
/// `top_p` of the total, sorted. It sorts a head of 64, then 4 times more
/// until the mass is reached, instead of the whole vocabulary: the head is
/// what a full sort would put first, so the result is the same.
fn top_p_head(cands: &mut Vec<(u32, f32)>, top_p: f32) {
    let total: f32 = cands.iter().map(|c| c.1).sum();
    let mut head = 64.min(cands.len());
    loop {
        if head < cands.len() {
            cands.select_nth_unstable_by(head - 1, by_prob);
        }
        cands[..head].sort_unstable_by(by_prob);
        let mut mass = 0.0;
        let reached = cands[..head].iter().position(|c| {
            mass += c.1 / total;
            mass >= top_p
        });
        if let Some(i) = reached {
            cands.truncate(i + 1);
            return;
        }
        if head == cands.len() {
            return;
        }
        head = (head * 4).min(cands.len());
    }
}

/// The highest logit's index (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn log_probs(logits: &[f32], token: u32, top: usize) -> (Option<f32>, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    let chosen = logits.get(token as usize).map(|l| l - log_sum);
    let mut best: Vec<(u32, f32)> = Vec::new();
    if top > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let n = top.min(idx.len());
        idx.select_nth_unstable_by(n - 1, |&a, &b| {
            logits[b as usize].total_cmp(&logits[a as usize])
        });
        idx.truncate(n);
        idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        best = idx
            .into_iter()
            .map(|i| (i, logits[i as usize] - log_sum))
            .collect();
    }
    (chosen, best)
}

/// A small, fast, portable generator: the same seed gives the same stream
/// on every platform and every version of this crate.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The partial selection keeps what sorting the whole vocabulary
        /// and cutting at `top_p` keeps, in the same order.
        #[test]
        fn the_top_p_head_is_what_a_full_sort_keeps(
            weights in proptest::collection::vec(0.0001f32..1.0, 1..3000),
            top_p in 0.01f32..0.999,
        ) {
            let cands: Vec<(u32, f32)> = weights.iter().enumerate().map(|(i, w)| (i as u32, *w)).collect();
            let mut full = cands.clone();
            full.sort_unstable_by(by_prob);
            let total: f32 = full.iter().map(|c| c.1).sum();
            let mut mass = 0.0;
            let cut = full.iter().position(|c| { mass += c.1 / total; mass >= top_p }).map_or(full.len(), |i| i + 1);
            // A boundary within rounding of top_p may fall either way.
            let near = |n: usize| {
                let m: f32 = full[..n].iter().map(|c| c.1 / total).sum();
                (m - top_p).abs() < 1e-4
            };
            let mut head = cands;
            top_p_head(&mut head, top_p);
            if !near(cut) && (cut < 2 || !near(cut - 1)) {
                prop_assert_eq!(&head[..], &full[..cut]);
            }
        }
    }

    fn cfg(temperature: f32, seed: u64) -> SamplingConfig {
        SamplingConfig {
            temperature,
            seed,
            ..SamplingConfig::greedy()
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingConfig::greedy(), &[]);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], None).token, 1);
    }

    #[test]
    fn same_seed_same_draws_other_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(cfg(1.0, seed), &[]);
            (0..40)
                .map(|_| s.sample(&mut logits.clone(), None).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy_and_min_p_cuts_the_tail() {
        let mut s = Sampler::new(
            SamplingConfig {
                top_k: 1,
                ..cfg(5.0, 1)
            },
            &[],
        );
        for _ in 0..20 {
            assert_eq!(s.sample(&mut [1.0, 1.5, 0.2], None).token, 1);
        }
        let mut s = Sampler::new(
            SamplingConfig {
                min_p: 0.5,
                ..cfg(1.0, 3)
            },
            &[],
        );
        for _ in 0..50 {
            assert_ne!(s.sample(&mut [5.0, 5.0, 0.0], None).token, 2);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let mut s = Sampler::new(
            SamplingConfig {
                top_p: 0.5,
                ..cfg(1.0, 9)
            },
            &[],
        );
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [10.0, 0.0, 0.0, 0.0], None).token, 0);
        }
    }

    #[test]
    fn penalties_push_repeats_down() {
        let mut s = Sampler::new(
            SamplingConfig {
                frequency_penalty: 2.0,
                ..SamplingConfig::greedy()
            },
            &[],
        );
        assert_eq!(s.sample(&mut [1.0, 0.5], None).token, 0);
        // Token 0 now carries a penalty of 2 and loses to token 1.
        assert_eq!(s.sample(&mut [1.0, 0.5], None).token, 1);
        let mut s = Sampler::new(
            SamplingConfig {
                repetition_penalty: 4.0,
                ..SamplingConfig::greedy()
            },
            &[0],
        );
        assert_eq!(s.sample(&mut [1.0, 0.5], None).token, 1);
    }

    #[test]
    fn logprobs_are_normalised() {
        let mut s = Sampler::new(SamplingConfig::greedy(), &[]);
        let c = s.sample(&mut [0.0, 0.0], Some(2));
        assert!((c.logprob.unwrap() - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(c.top.len(), 2);
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        let p = SamplingParams {
            top_p: Some(0.0),
            ..Default::default()
        };
        assert!(SamplingConfig::from_params(&p, 0)
            .unwrap_err()
            .contains("top_p"));
        let p = SamplingParams {
            temperature: Some(-1.0),
            ..Default::default()
        };
        assert!(SamplingConfig::from_params(&p, 0).is_err());
    }
}

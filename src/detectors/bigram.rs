//! A bigram model of template sequences: the trivial baseline the transformer must beat
//! (`vigil eval` scores both on the same requests). P(current | previous) from counts with
//! add-k smoothing, `previous` being the start of the client's session when there is none.
//! Trained offline from the same per-client sequences as the transformer; scoring is a
//! hash lookup.

use std::collections::HashMap;

use crate::template::TemplateId;

/// Stands for "no previous request" (the start of a session).
const START: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct Bigram {
    pairs: HashMap<(u32, u32), u32>,
    /// Times each template (or START) was followed by anything.
    from: HashMap<u32, u32>,
    vocab: usize,
    k: f64,
}

impl Bigram {
    /// `sequences` are the clients' template ids in order; `vocab` counts ids (UNKNOWN
    /// included).
    pub fn train(sequences: &[Vec<TemplateId>], vocab: usize) -> Bigram {
        let mut pairs: HashMap<(u32, u32), u32> = HashMap::new();
        let mut from: HashMap<u32, u32> = HashMap::new();
        for seq in sequences {
            let mut prev = START;
            for t in seq {
                *pairs.entry((prev, t.0)).or_default() += 1;
                *from.entry(prev).or_default() += 1;
                prev = t.0;
            }
        }
        Bigram {
            pairs,
            from,
            vocab: vocab.max(1),
            k: 0.1,
        }
    }

    /// Negative log-likelihood (nats) of `current` after `previous` (`None`: first request).
    pub fn nll(&self, previous: Option<TemplateId>, current: TemplateId) -> f64 {
        let prev = previous.map_or(START, |t| t.0);
        let pair = self.pairs.get(&(prev, current.0)).copied().unwrap_or(0) as f64;
        let total = self.from.get(&prev).copied().unwrap_or(0) as f64;
        let p = (pair + self.k) / (total + self.k * self.vocab as f64);
        -p.ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_successor_is_unsurprising() {
        let t = |i| TemplateId(i);
        let seqs: Vec<Vec<TemplateId>> = (0..50).map(|_| vec![t(1), t(2), t(3)]).collect();
        let b = Bigram::train(&seqs, 5);
        assert!(b.nll(Some(t(2)), t(3)) < 0.1);
        assert!(b.nll(Some(t(1)), t(3)) > 3.0);
        assert!(b.nll(None, t(1)) < b.nll(None, t(3)));
        assert!(b.nll(Some(t(4)), t(1)).is_finite(), "unseen context");
    }
}

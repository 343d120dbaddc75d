//! Trains vigil's sequence model: a small causal transformer over request-template ids, written
//! with candle and exported as ONNX by our own code (no Python in the loop).
//!
//! Sits in `learn/`: it runs offline (`vigil train`, the adaptive trainer on a blocking thread) and
//! never on the request path. Its only output is ONNX bytes plus a report; serving
//! (`detectors/transformer.rs`) loads those bytes with tract and knows nothing of candle.
//!
//! Token layout, shared with serving and with any model exported from PyTorch for vigil:
//! `0 = PAD`, `1 = BOS` (start of a client's session), `2 + t` for template id `t`
//! (template 0 is vigil's UNKNOWN template, so token 2 is UNK). Windows are **left-aligned**:
//! a sequence starts at position 0 and PAD fills the tail. With a causal mask, padding after the
//! last real token cannot change any earlier logit, and a session's first request sits at the
//! same positions in a short sequence and in the first window of a long one.

use std::time::Instant;

use candle_core::{Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use prost::Message;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tract_onnx::pb;

/// Padding token: fills a window after the last real token; never a training target.
pub const PAD: u32 = 0;
/// Start of a client's session; present only when the whole history is known.
pub const BOS: u32 = 1;
/// Unknown or rare template (token of template id 0).
pub const UNK: u32 = 2;
/// Token id of template id `t` is `t + TEMPLATE_OFFSET`.
pub const TEMPLATE_OFFSET: u32 = 2;

const LAYER_NORM_EPS: f64 = 1e-5;
// Finite rather than -inf: a fully masked row (never produced here, but cheap to be safe from)
// then stays finite in candle's backward pass and in tract.
const MASK_VALUE: f32 = -1e9;
/// Logit of tokens that are never predicted: exp(-1e4 - max) is exactly 0 in f32 and f64.
const NEVER_LOGIT: f32 = -1e4;
/// Validation improvements smaller than this share count as "no improvement" for patience.
const MIN_RELATIVE_IMPROVEMENT: f64 = 0.005;
const ONNX_OPSET: i64 = 17;
// IR version 8 is the one that goes with opset 17.
const ONNX_IR_VERSION: i64 = 8;

/// Hyper-parameters of the sequence model and its training run.
#[derive(Debug, Clone, PartialEq)]
pub struct LmConfig {
    /// Tokens per model input (W). Serving sees at most this many previous requests.
    pub window: usize,
    pub d_model: usize,
    pub heads: usize,
    pub layers: usize,
    pub d_ff: usize,
    /// Upper bound; early stopping usually ends training sooner.
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Share of client sequences held out for validation and early stopping.
    pub validation_share: f64,
    /// Epochs in a row whose validation loss improved by less than 0.5% before training stops.
    pub patience: usize,
    /// Templates seen fewer times than this in the training sequences become UNK.
    pub unk_min_count: u64,
    /// Cap on training windows (sampled evenly over all windows) so training time is bounded.
    pub max_windows: usize,
    /// Step between consecutive windows of a long sequence; `0` means `window / 4`.
    pub stride: usize,
    /// Share of training input/target tokens replaced by UNK at random, so UNK gets a learned,
    /// moderate probability instead of being "never seen, maximally surprising".
    pub unk_noise: f64,
    pub seed: u64,
}

impl Default for LmConfig {
    /// Sized for vigil's budgets: 54-66 us per uncached inference with tract on the 2-core
    /// development machine and under 30 s of training on 150k requests (README, Performance).
    fn default() -> Self {
        Self {
            window: 16,
            d_model: 32,
            heads: 2,
            layers: 1,
            d_ff: 64,
            epochs: 6,
            batch_size: 64,
            learning_rate: 5e-3,
            validation_share: 0.1,
            patience: 1,
            unk_min_count: 3,
            max_windows: 20_000,
            stride: 0,
            unk_noise: 0.01,
            seed: 0x5EED,
        }
    }
}

/// What a training run did; written to the model report and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    pub windows: usize,
    pub validation_windows: usize,
    pub epochs_run: usize,
    /// 1-based epoch whose weights were kept (the best validation loss).
    pub best_epoch: usize,
    /// Mean masked cross-entropy (nats per predicted token), one entry per epoch.
    pub train_loss: Vec<f64>,
    pub validation_loss: Vec<f64>,
    /// Templates mapped to UNK because they were rarer than `unk_min_count`.
    pub rare_templates: usize,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum LmTrainError {
    #[error("invalid transformer training config: {}", .0.join("; "))]
    InvalidConfig(Vec<String>),
    #[error("not enough data to train the transformer: {0}")]
    NotEnoughData(String),
    #[error("candle failed while {stage}: {source}")]
    Candle {
        stage: &'static str,
        #[source]
        source: candle_core::Error,
    },
    #[error(
        "transformer training diverged at epoch {epoch}: mean loss is {loss}; lower learning_rate"
    )]
    Diverged { epoch: usize, loss: f64 },
}

fn candle_err(stage: &'static str) -> impl FnOnce(candle_core::Error) -> LmTrainError {
    move |source| LmTrainError::Candle { stage, source }
}

impl LmConfig {
    fn effective_stride(&self) -> usize {
        if self.stride == 0 {
            (self.window / 4).max(1)
        } else {
            self.stride
        }
    }

    /// Every problem at once, each naming its field.
    pub fn validate(&self) -> Result<(), LmTrainError> {
        let mut problems = Vec::new();
        if self.window < 2 {
            problems.push(format!("window must be at least 2, got {}", self.window));
        }
        if self.d_model == 0 || self.heads == 0 || self.d_model % self.heads != 0 {
            problems.push(format!(
                "d_model ({}) must be a positive multiple of heads ({})",
                self.d_model, self.heads
            ));
        }
        if self.layers == 0 {
            problems.push("layers must be at least 1".to_string());
        }
        if self.d_ff == 0 {
            problems.push("d_ff must be at least 1".to_string());
        }
        if self.epochs == 0 {
            problems.push("epochs must be at least 1".to_string());
        }
        if self.batch_size == 0 {
            problems.push("batch_size must be at least 1".to_string());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            problems.push(format!(
                "learning_rate must be > 0, got {}",
                self.learning_rate
            ));
        }
        if !(0.0..0.9).contains(&self.validation_share) {
            problems.push(format!(
                "validation_share must be in [0, 0.9), got {}",
                self.validation_share
            ));
        }
        if self.max_windows == 0 {
            problems.push("max_windows must be at least 1".to_string());
        }
        if self.stride > self.window {
            problems.push(format!(
                "stride ({}) must not exceed window ({}) or targets are skipped",
                self.stride, self.window
            ));
        }
        if !(0.0..0.5).contains(&self.unk_noise) {
            problems.push(format!(
                "unk_noise must be in [0, 0.5), got {}",
                self.unk_noise
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LmTrainError::InvalidConfig(problems))
        }
    }
}

/// Training windows, flattened: `inputs[i * W .. (i + 1) * W]` is window `i`.
#[derive(Debug, Default, Clone)]
struct Windows {
    inputs: Vec<u32>,
    targets: Vec<u32>,
    count: usize,
}

impl Windows {
    fn push(&mut self, input: &[u32], target: &[u32]) {
        self.inputs.extend_from_slice(input);
        self.targets.extend_from_slice(target);
        self.count += 1;
    }

    /// Keeps at most `max` windows, spread evenly, so a cap does not drop whole clients at the
    /// end of the log.
    fn sample_evenly(self, max: usize, w: usize) -> Windows {
        if self.count <= max {
            return self;
        }
        let mut out = Windows::default();
        for k in 0..max {
            let i = k * self.count / max;
            out.push(
                &self.inputs[i * w..(i + 1) * w],
                &self.targets[i * w..(i + 1) * w],
            );
        }
        out
    }
}

/// Cuts one sequence (a session of one user agent of a client; no BOS yet) into windows:
/// input `[BOS, s1, ...]`, target the next token at every position, PAD after the end.
fn push_windows(tokens: &[u32], w: usize, stride: usize, out: &mut Windows) {
    let n = tokens.len();
    if n == 0 {
        return;
    }
    let mut full = Vec::with_capacity(n + 1);
    full.push(BOS);
    full.extend_from_slice(tokens);
    if n <= w {
        let mut input = vec![PAD; w];
        let mut target = vec![PAD; w];
        input[..n].copy_from_slice(&full[..n]);
        target[..n].copy_from_slice(&full[1..=n]);
        out.push(&input, &target);
        return;
    }
    // Windows start at 0, stride, 2*stride, ... and the last one ends exactly at the end, so
    // every target is predicted at least once with at least `w - stride + 1` tokens of context.
    let last = n - w;
    let mut s = 0;
    loop {
        out.push(&full[s..s + w], &full[s + 1..s + w + 1]);
        if s == last {
            break;
        }
        s = (s + stride).min(last);
    }
}

/// Template id -> token, with rare and out-of-range templates folded into UNK.
fn token_map(sequences: &[&Vec<u32>], n_templates: usize, unk_min_count: u64) -> (Vec<u32>, usize) {
    let mut counts = vec![0u64; n_templates];
    for seq in sequences {
        for &t in seq.iter() {
            if let Some(c) = counts.get_mut(t as usize) {
                *c += 1;
            }
        }
    }
    let mut rare = 0;
    let map = counts
        .iter()
        .enumerate()
        .map(|(t, &c)| {
            if t == 0 {
                UNK
            } else if c < unk_min_count {
                if c > 0 {
                    rare += 1;
                }
                UNK
            } else {
                t as u32 + TEMPLATE_OFFSET
            }
        })
        .collect();
    (map, rare)
}

fn build_windows(sequences: &[&Vec<u32>], map: &[u32], w: usize, stride: usize) -> Windows {
    let mut out = Windows::default();
    let mut tokens = Vec::new();
    for seq in sequences {
        tokens.clear();
        tokens.extend(
            seq.iter()
                .map(|&t| map.get(t as usize).copied().unwrap_or(UNK)),
        );
        push_windows(&tokens, w, stride, &mut out);
    }
    out
}

/// Model dimensions, kept with the weights so export and forward agree.
#[derive(Debug, Clone, Copy)]
struct Dims {
    vocab: usize,
    window: usize,
    d_model: usize,
    heads: usize,
    d_ff: usize,
}

struct Layer {
    ln1_g: Var,
    ln1_b: Var,
    wq: Var,
    bq: Var,
    wk: Var,
    bk: Var,
    wv: Var,
    bv: Var,
    wo: Var,
    bo: Var,
    ln2_g: Var,
    ln2_b: Var,
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
}

/// The causal LM. Linear weights are stored `[in, out]` so that `x.matmul(w)` and ONNX
/// `MatMul(x, w)` use the same bytes.
struct Model {
    dims: Dims,
    tok: Var,
    pos: Var,
    layers: Vec<Layer>,
    lnf_g: Var,
    lnf_b: Var,
    w_out: Var,
    b_out: Var,
    mask: Tensor,
    /// Template ids (other than 0) that training folded into UNK; exported as metadata so
    /// serving scores them as UNK too.
    folded: Vec<u32>,
}

/// Seeded initialiser: candle's own RNG on CPU cannot be seeded per call, and we want a given
/// seed to give the same model.
struct Init {
    rng: StdRng,
    device: Device,
}

impl Init {
    fn normal(&mut self) -> f32 {
        // Box-Muller; rand 0.8 has no normal distribution without rand_distr.
        let u1: f32 = self.rng.gen_range(f32::EPSILON..1.0);
        let u2: f32 = self.rng.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    fn var(
        &mut self,
        shape: &[usize],
        mut f: impl FnMut(&mut Self) -> f32,
    ) -> Result<Var, LmTrainError> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| f(self)).collect();
        Var::from_vec(data, shape, &self.device).map_err(candle_err("initialising weights"))
    }

    fn embedding(&mut self, rows: usize, cols: usize) -> Result<Var, LmTrainError> {
        self.var(&[rows, cols], |s| 0.1 * s.normal())
    }

    /// PyTorch's `nn.Linear` default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    fn linear(&mut self, fan_in: usize, fan_out: usize) -> Result<(Var, Var), LmTrainError> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let w = self.var(&[fan_in, fan_out], |s| s.rng.gen_range(-bound..bound))?;
        let b = self.var(&[fan_out], |_| 0.0)?;
        Ok((w, b))
    }

    fn norm(&mut self, d: usize) -> Result<(Var, Var), LmTrainError> {
        Ok((self.var(&[d], |_| 1.0)?, self.var(&[d], |_| 0.0)?))
    }
}

fn causal_mask(w: usize) -> Vec<f32> {
    (0..w)
        .flat_map(|i| (0..w).map(move |j| if j <= i { 0.0 } else { MASK_VALUE }))
        .collect()
}

fn linear(x: &Tensor, w: &Var, b: &Var) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let (rows, inner) = (
        dims[..dims.len() - 1].iter().product::<usize>(),
        dims[dims.len() - 1],
    );
    let out = w.dim(1)?;
    let y = x
        .reshape((rows, inner))?
        .matmul(w.as_tensor())?
        .broadcast_add(b.as_tensor())?;
    let mut shape = dims;
    let last = shape.len() - 1;
    shape[last] = out;
    y.reshape(shape)
}

/// LayerNorm from primitives: candle's fused op has no backward pass.
fn layer_norm(x: &Tensor, g: &Var, b: &Var) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + LAYER_NORM_EPS)?.sqrt()?)?;
    normed
        .broadcast_mul(g.as_tensor())?
        .broadcast_add(b.as_tensor())
}

/// Softmax from primitives: `softmax_last_dim` has no backward pass. The max is detached, which
/// is exact because softmax does not depend on the shift.
fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

impl Model {
    fn new(dims: Dims, layers: usize, seed: u64, device: &Device) -> Result<Self, LmTrainError> {
        let mut init = Init {
            rng: StdRng::seed_from_u64(seed),
            device: device.clone(),
        };
        let d = dims.d_model;
        let tok = init.embedding(dims.vocab, d)?;
        let pos = init.embedding(dims.window, d)?;
        let mut stack = Vec::with_capacity(layers);
        for _ in 0..layers {
            let (ln1_g, ln1_b) = init.norm(d)?;
            let (wq, bq) = init.linear(d, d)?;
            let (wk, bk) = init.linear(d, d)?;
            let (wv, bv) = init.linear(d, d)?;
            let (wo, bo) = init.linear(d, d)?;
            let (ln2_g, ln2_b) = init.norm(d)?;
            let (w1, b1) = init.linear(d, dims.d_ff)?;
            let (w2, b2) = init.linear(dims.d_ff, d)?;
            stack.push(Layer {
                ln1_g,
                ln1_b,
                wq,
                bq,
                wk,
                bk,
                wv,
                bv,
                wo,
                bo,
                ln2_g,
                ln2_b,
                w1,
                b1,
                w2,
                b2,
            });
        }
        let (lnf_g, lnf_b) = init.norm(d)?;
        let (w_out, b_out) = init.linear(d, dims.vocab)?;
        let mask = Tensor::from_vec(causal_mask(dims.window), (dims.window, dims.window), device)
            .map_err(candle_err("building the causal mask"))?;
        Ok(Self {
            dims,
            tok,
            pos,
            layers: stack,
            lnf_g,
            lnf_b,
            w_out,
            b_out,
            mask,
            folded: Vec::new(),
        })
    }

    /// Every trainable tensor with its ONNX initializer name, in a fixed order.
    fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut v: Vec<(String, &Var)> =
            vec![("tok_emb".into(), &self.tok), ("pos_emb".into(), &self.pos)];
        for (i, l) in self.layers.iter().enumerate() {
            for (name, var) in [
                ("ln1_g", &l.ln1_g),
                ("ln1_b", &l.ln1_b),
                ("wq", &l.wq),
                ("bq", &l.bq),
                ("wk", &l.wk),
                ("bk", &l.bk),
                ("wv", &l.wv),
                ("bv", &l.bv),
                ("wo", &l.wo),
                ("bo", &l.bo),
                ("ln2_g", &l.ln2_g),
                ("ln2_b", &l.ln2_b),
                ("w1", &l.w1),
                ("b1", &l.b1),
                ("w2", &l.w2),
                ("b2", &l.b2),
            ] {
                v.push((format!("l{i}.{name}"), var));
            }
        }
        v.push(("lnf_g".into(), &self.lnf_g));
        v.push(("lnf_b".into(), &self.lnf_b));
        v.push(("w_out".into(), &self.w_out));
        v.push(("b_out".into(), &self.b_out));
        v
    }

    fn vars(&self) -> Vec<Var> {
        self.named_vars()
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn snapshot(&self) -> candle_core::Result<Vec<Tensor>> {
        self.named_vars()
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect()
    }

    fn restore(&self, snapshot: &[Tensor]) -> candle_core::Result<()> {
        for ((_, var), t) in self.named_vars().iter().zip(snapshot) {
            var.set(t)?;
        }
        Ok(())
    }

    /// Makes the weights self-consistent for consumers that know nothing of training: folded
    /// templates embed exactly like UNK, and tokens that are never a target (PAD, BOS, folded
    /// templates) get a fixed, negligible logit so they take no probability mass from the rest.
    fn fold_unknown(&mut self, map: &[u32]) -> candle_core::Result<()> {
        let (v, d) = (self.dims.vocab, self.dims.d_model);
        self.folded = (1..map.len())
            .filter(|&t| map[t] == UNK)
            .map(|t| t as u32)
            .collect();
        let never_targets: Vec<usize> = [PAD as usize, BOS as usize]
            .into_iter()
            .chain(self.folded.iter().map(|&t| (t + TEMPLATE_OFFSET) as usize))
            .collect();

        let mut tok = self.tok.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let unk_row = tok[UNK as usize * d..(UNK as usize + 1) * d].to_vec();
        for &t in &self.folded {
            let r = (t + TEMPLATE_OFFSET) as usize;
            tok[r * d..(r + 1) * d].copy_from_slice(&unk_row);
        }
        self.tok
            .set(&Tensor::from_vec(tok, (v, d), self.mask.device())?)?;

        let mut w_out = self.w_out.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let mut b_out = self.b_out.as_tensor().to_vec1::<f32>()?;
        for &c in &never_targets {
            for row in 0..d {
                w_out[row * v + c] = 0.0;
            }
            b_out[c] = NEVER_LOGIT;
        }
        self.w_out
            .set(&Tensor::from_vec(w_out, (d, v), self.mask.device())?)?;
        self.b_out
            .set(&Tensor::from_vec(b_out, v, self.mask.device())?)?;
        Ok(())
    }

    fn attention(&self, h: &Tensor, l: &Layer) -> candle_core::Result<Tensor> {
        let (b, w, d) = h.dims3()?;
        let heads = self.dims.heads;
        let dh = d / heads;
        let split = |x: Tensor| -> candle_core::Result<Tensor> {
            x.reshape((b, w, heads, dh))?.transpose(1, 2)?.contiguous()
        };
        let q = split(linear(h, &l.wq, &l.bq)?)?;
        let k = split(linear(h, &l.wk, &l.bk)?)?;
        let v = split(linear(h, &l.wv, &l.bv)?)?;
        let scale = 1.0 / (dh as f64).sqrt();
        let scores =
            (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * scale)?.broadcast_add(&self.mask)?;
        let p = softmax(&scores)?;
        let o = p
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, w, d))?;
        linear(&o, &l.wo, &l.bo)
    }

    /// `ids`: u32 `[batch, W]` -> logits `[batch, W, vocab]`; mirrors the exported ONNX graph.
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, w) = ids.dims2()?;
        let d = self.dims.d_model;
        let mut x = self
            .tok
            .as_tensor()
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, w, d))?
            .broadcast_add(self.pos.as_tensor())?;
        for l in &self.layers {
            let h = layer_norm(&x, &l.ln1_g, &l.ln1_b)?;
            x = (&x + self.attention(&h, l)?)?;
            let h = layer_norm(&x, &l.ln2_g, &l.ln2_b)?;
            let f = linear(&linear(&h, &l.w1, &l.b1)?.gelu_erf()?, &l.w2, &l.b2)?;
            x = (&x + f)?;
        }
        let x = layer_norm(&x, &self.lnf_g, &self.lnf_b)?;
        linear(&x, &self.w_out, &self.b_out)
    }

    /// Mean cross-entropy over non-PAD targets. Returns the loss tensor (for backward) and the
    /// number of targets it averages over.
    fn loss(
        &self,
        inputs: &[u32],
        targets: &[u32],
        rows: usize,
    ) -> candle_core::Result<(Tensor, usize)> {
        let w = self.dims.window;
        let device = self.mask.device();
        let ids = Tensor::from_slice(inputs, (rows, w), device)?;
        let tgt = Tensor::from_slice(targets, (rows * w, 1), device)?;
        let mask: Vec<f32> = targets
            .iter()
            .map(|&t| if t == PAD { 0.0 } else { 1.0 })
            .collect();
        let count = mask.iter().filter(|&&m| m > 0.0).count();
        let mask = Tensor::from_vec(mask, rows * w, device)?;
        let logits = self.forward(&ids)?.reshape((rows * w, self.dims.vocab))?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = logp.gather(&tgt, 1)?.squeeze(1)?;
        let loss = ((picked * mask)?.sum_all()? * (-1.0 / count.max(1) as f64))?;
        Ok((loss, count))
    }
}

/// Mean loss over `data` without gradients, weighted by target count.
fn evaluate(model: &Model, data: &Windows, batch: usize) -> Result<f64, LmTrainError> {
    let w = model.dims.window;
    let (mut total, mut count) = (0.0f64, 0usize);
    let mut start = 0;
    while start < data.count {
        let rows = batch.min(data.count - start);
        let span = start * w..(start + rows) * w;
        let (loss, n) = model
            .loss(&data.inputs[span.clone()], &data.targets[span], rows)
            .map_err(candle_err("computing validation loss"))?;
        let loss = loss
            .to_scalar::<f32>()
            .map_err(candle_err("reading validation loss"))?;
        total += f64::from(loss) * n as f64;
        count += n;
        start += rows;
    }
    Ok(if count == 0 {
        f64::NAN
    } else {
        total / count as f64
    })
}

/// Trains the sequence model on per-client template-id sequences (time order, `0` = unknown
/// template, ids `< n_templates`) and returns ONNX bytes with the I/O contract
/// `ids: int64 [batch, W] -> logits: float32 [batch, W, 2 + n_templates]`.
///
/// `progress(epoch, batch, batches)` is called after every batch (epoch and batch 1-based).
pub fn train(
    sequences: &[Vec<u32>],
    n_templates: usize,
    cfg: &LmConfig,
    progress: impl FnMut(usize, usize, usize),
) -> Result<(Vec<u8>, TrainReport), LmTrainError> {
    let started = Instant::now();
    let (model, mut report) = fit(sequences, n_templates, cfg, progress)?;
    let onnx = export_onnx(&model, n_templates, cfg)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok((onnx, report))
}

fn fit(
    sequences: &[Vec<u32>],
    n_templates: usize,
    cfg: &LmConfig,
    mut progress: impl FnMut(usize, usize, usize),
) -> Result<(Model, TrainReport), LmTrainError> {
    let started = Instant::now();
    cfg.validate()?;
    if n_templates == 0 {
        return Err(LmTrainError::InvalidConfig(vec![
            "n_templates must be at least 1".into(),
        ]));
    }
    let w = cfg.window;
    let stride = cfg.effective_stride();
    let mut rng = StdRng::seed_from_u64(cfg.seed);

    // Split by sequence, not by window: windows of one sequence overlap, and a validation set
    // that shares sequences with training would reward memorising them.
    let mut order: Vec<usize> = (0..sequences.len())
        .filter(|&i| !sequences[i].is_empty())
        .collect();
    order.shuffle(&mut rng);
    let n_val = if order.len() >= 2 {
        ((order.len() as f64 * cfg.validation_share).round() as usize).min(order.len() - 1)
    } else {
        0
    };
    let val_seqs: Vec<&Vec<u32>> = order[..n_val].iter().map(|&i| &sequences[i]).collect();
    let train_seqs: Vec<&Vec<u32>> = order[n_val..].iter().map(|&i| &sequences[i]).collect();

    let (map, rare_templates) = token_map(&train_seqs, n_templates, cfg.unk_min_count);
    let train_windows =
        build_windows(&train_seqs, &map, w, stride).sample_evenly(cfg.max_windows, w);
    let max_val = ((cfg.max_windows as f64 * cfg.validation_share).ceil() as usize).max(1);
    let val_windows = build_windows(&val_seqs, &map, w, stride).sample_evenly(max_val, w);
    if train_windows.count == 0 {
        return Err(LmTrainError::NotEnoughData(format!(
            "{} client sequences gave no training window (all empty?)",
            sequences.len()
        )));
    }

    let device = Device::Cpu;
    let dims = Dims {
        vocab: n_templates + TEMPLATE_OFFSET as usize,
        window: w,
        d_model: cfg.d_model,
        heads: cfg.heads,
        d_ff: cfg.d_ff,
    };
    let model = Model::new(dims, cfg.layers, rng.gen(), &device)?;
    let mut opt = AdamW::new(
        model.vars(),
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: 0.01,
            ..ParamsAdamW::default()
        },
    )
    .map_err(candle_err("creating the optimizer"))?;

    let batches = train_windows.count.div_ceil(cfg.batch_size);
    let mut report = TrainReport {
        windows: train_windows.count,
        validation_windows: val_windows.count,
        epochs_run: 0,
        best_epoch: 0,
        train_loss: Vec::new(),
        validation_loss: Vec::new(),
        rare_templates,
        seconds: 0.0,
    };
    let mut best: Option<(f64, Vec<Tensor>)> = None;
    let mut stale_epochs = 0;
    let mut idx: Vec<usize> = (0..train_windows.count).collect();
    let mut bin = Vec::with_capacity(cfg.batch_size * w);
    let mut btg = Vec::with_capacity(cfg.batch_size * w);

    for epoch in 1..=cfg.epochs {
        idx.shuffle(&mut rng);
        let (mut total, mut count) = (0.0f64, 0usize);
        for (b, chunk) in idx.chunks(cfg.batch_size).enumerate() {
            bin.clear();
            btg.clear();
            for &i in chunk {
                bin.extend_from_slice(&train_windows.inputs[i * w..(i + 1) * w]);
                btg.extend_from_slice(&train_windows.targets[i * w..(i + 1) * w]);
            }
            // Fresh UNK noise every batch: the model learns "some request I do not know" as a
            // moderately likely event, wherever it occurs.
            if cfg.unk_noise > 0.0 {
                for t in bin.iter_mut().chain(btg.iter_mut()) {
                    if *t >= TEMPLATE_OFFSET && rng.gen_bool(cfg.unk_noise) {
                        *t = UNK;
                    }
                }
            }
            let (loss, n) = model
                .loss(&bin, &btg, chunk.len())
                .map_err(candle_err("computing training loss"))?;
            opt.backward_step(&loss)
                .map_err(candle_err("back-propagating"))?;
            let value = f64::from(
                loss.to_scalar::<f32>()
                    .map_err(candle_err("reading training loss"))?,
            );
            if !value.is_finite() {
                return Err(LmTrainError::Diverged { epoch, loss: value });
            }
            total += value * n as f64;
            count += n;
            progress(epoch, b + 1, batches);
        }
        let train_loss = total / count.max(1) as f64;
        report.train_loss.push(train_loss);
        report.epochs_run = epoch;

        // Without a validation set the last epoch wins; with one, the best validation epoch.
        let score = if val_windows.count > 0 {
            let v = evaluate(&model, &val_windows, cfg.batch_size.max(256))?;
            report.validation_loss.push(v);
            v
        } else {
            train_loss
        };
        if !score.is_finite() {
            return Err(LmTrainError::Diverged { epoch, loss: score });
        }
        // The best weights are kept whatever the margin; patience only counts epochs that
        // improved by less than MIN_RELATIVE_IMPROVEMENT, so a long flat tail does not cost
        // epochs (the budget that matters on a 2-core proxy host).
        let no_val = val_windows.count == 0;
        let (is_best, significant) = match &best {
            None => (true, true),
            Some((b, _)) => (
                no_val || score < *b,
                no_val || score < *b * (1.0 - MIN_RELATIVE_IMPROVEMENT),
            ),
        };
        if is_best {
            best = Some((
                score,
                model
                    .snapshot()
                    .map_err(candle_err("saving the best weights"))?,
            ));
            report.best_epoch = epoch;
        }
        if significant {
            stale_epochs = 0;
        } else {
            stale_epochs += 1;
            if stale_epochs >= cfg.patience {
                break;
            }
        }
    }
    if let Some((_, weights)) = &best {
        model
            .restore(weights)
            .map_err(candle_err("restoring the best weights"))?;
    }
    let mut model = model;
    model
        .fold_unknown(&map)
        .map_err(candle_err("folding rare templates into UNK"))?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok((model, report))
}

// ---------------------------------------------------------------------------------------------
// ONNX export. The graph mirrors `Model::forward` op for op, so tract's output can be checked
// against candle's in tests.

struct GraphBuilder {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
}

fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

enum Dim {
    Fixed(usize),
    Symbolic(&'static str),
}

fn value_info(name: &str, elem: pb::tensor_proto::DataType, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => Value::DimValue(*v as i64),
                Dim::Symbolic(p) => Value::DimParam((*p).to_string()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    fn f32_init(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    fn i64_init(&mut self, name: &str, data: &[i64]) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: vec![data.len() as i64],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<pb::AttributeProto>,
    ) -> String {
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: output.into(),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        output.into()
    }

    fn linear(&mut self, x: &str, w: &str, b: &str, out: &str) -> String {
        let mm = self.node("MatMul", &[x, w], &format!("{out}.mm"), vec![]);
        self.node("Add", &[&mm, b], out, vec![])
    }

    fn layer_norm(&mut self, x: &str, g: &str, b: &str, out: &str) -> String {
        self.node(
            "LayerNormalization",
            &[x, g, b],
            out,
            vec![
                attr_int("axis", -1),
                attr_float("epsilon", LAYER_NORM_EPS as f32),
            ],
        )
    }
}

/// `[3, 4, 5, 9]` -> `"3-5,9"`: compact even for thousands of rare templates.
fn id_ranges(ids: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

fn tensor_data(var: &Var) -> Result<Vec<f32>, LmTrainError> {
    var.as_tensor()
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(candle_err("reading weights for export"))
}

fn export_onnx(model: &Model, n_templates: usize, cfg: &LmConfig) -> Result<Vec<u8>, LmTrainError> {
    let Dims {
        vocab,
        window: w,
        d_model: d,
        heads,
        d_ff,
    } = model.dims;
    let dh = d / heads;
    let mut g = GraphBuilder {
        nodes: Vec::new(),
        initializers: Vec::new(),
    };
    for (name, var) in model.named_vars() {
        let data = tensor_data(var)?;
        g.f32_init(&name, var.dims(), &data);
    }
    g.f32_init("causal_mask", &[w, w], &causal_mask(w));
    g.f32_init("attn_scale", &[], &[1.0 / (dh as f32).sqrt()]);
    g.f32_init("gelu_in", &[], &[std::f32::consts::FRAC_1_SQRT_2]);
    g.f32_init("one", &[], &[1.0]);
    g.f32_init("half", &[], &[0.5]);
    // Reshape with 0 copies the (symbolic) batch dimension through.
    let heads_shape = g.i64_init("shape_heads", &[0, w as i64, heads as i64, dh as i64]);
    let model_shape = g.i64_init("shape_model", &[0, w as i64, d as i64]);

    let emb = g.node(
        "Gather",
        &["tok_emb", "ids"],
        "emb",
        vec![attr_int("axis", 0)],
    );
    let mut x = g.node("Add", &[&emb, "pos_emb"], "x0", vec![]);
    for i in 0..model.layers.len() {
        let p = |n: &str| format!("l{i}.{n}");
        let h = g.layer_norm(&x, &p("ln1_g"), &p("ln1_b"), &p("ln1"));
        let q = g.linear(&h, &p("wq"), &p("bq"), &p("q"));
        let k = g.linear(&h, &p("wk"), &p("bk"), &p("k"));
        let v = g.linear(&h, &p("wv"), &p("bv"), &p("v"));
        let q = g.node("Reshape", &[&q, &heads_shape], &p("q.r"), vec![]);
        let k = g.node("Reshape", &[&k, &heads_shape], &p("k.r"), vec![]);
        let v = g.node("Reshape", &[&v, &heads_shape], &p("v.r"), vec![]);
        let q = g.node(
            "Transpose",
            &[&q],
            &p("q.t"),
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let k = g.node(
            "Transpose",
            &[&k],
            &p("k.t"),
            vec![attr_ints("perm", &[0, 2, 3, 1])],
        );
        let v = g.node(
            "Transpose",
            &[&v],
            &p("v.t"),
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let s = g.node("MatMul", &[&q, &k], &p("scores"), vec![]);
        let s = g.node("Mul", &[&s, "attn_scale"], &p("scores.scaled"), vec![]);
        let s = g.node("Add", &[&s, "causal_mask"], &p("scores.masked"), vec![]);
        let a = g.node("Softmax", &[&s], &p("attn"), vec![attr_int("axis", -1)]);
        let o = g.node("MatMul", &[&a, &v], &p("ctx"), vec![]);
        let o = g.node(
            "Transpose",
            &[&o],
            &p("ctx.t"),
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let o = g.node("Reshape", &[&o, &model_shape], &p("ctx.r"), vec![]);
        let o = g.linear(&o, &p("wo"), &p("bo"), &p("attn_out"));
        x = g.node("Add", &[&x, &o], &p("res1"), vec![]);
        let h = g.layer_norm(&x, &p("ln2_g"), &p("ln2_b"), &p("ln2"));
        let f = g.linear(&h, &p("w1"), &p("b1"), &p("ff1"));
        // GELU (erf form), exactly candle's `gelu_erf`.
        let s = g.node("Mul", &[&f, "gelu_in"], &p("gelu.s"), vec![]);
        let e = g.node("Erf", &[&s], &p("gelu.erf"), vec![]);
        let e = g.node("Add", &[&e, "one"], &p("gelu.1p"), vec![]);
        let e = g.node("Mul", &[&f, &e], &p("gelu.x"), vec![]);
        let f = g.node("Mul", &[&e, "half"], &p("gelu"), vec![]);
        let f = g.linear(&f, &p("w2"), &p("b2"), &p("ff2"));
        x = g.node("Add", &[&x, &f], &p("res2"), vec![]);
    }
    let x = g.layer_norm(&x, "lnf_g", "lnf_b", "lnf");
    g.linear(&x, "w_out", "b_out", "logits");

    use pb::tensor_proto::DataType;
    let graph = pb::GraphProto {
        node: g.nodes,
        name: "vigil_sequence_model".into(),
        initializer: g.initializers,
        input: vec![value_info(
            "ids",
            DataType::Int64,
            &[Dim::Symbolic("batch"), Dim::Fixed(w)],
        )],
        output: vec![value_info(
            "logits",
            DataType::Float,
            &[Dim::Symbolic("batch"), Dim::Fixed(w), Dim::Fixed(vocab)],
        )],
        ..Default::default()
    };
    let meta = [
        ("vigil.kind", "causal_template_lm".to_string()),
        ("vigil.pad_id", PAD.to_string()),
        ("vigil.bos_id", BOS.to_string()),
        ("vigil.unk_id", UNK.to_string()),
        ("vigil.template_offset", TEMPLATE_OFFSET.to_string()),
        ("vigil.layout", "left_aligned".to_string()),
        ("vigil.window", w.to_string()),
        ("vigil.vocab", vocab.to_string()),
        ("vigil.n_templates", n_templates.to_string()),
        ("vigil.d_model", d.to_string()),
        ("vigil.heads", heads.to_string()),
        ("vigil.layers", model.layers.len().to_string()),
        ("vigil.d_ff", d_ff.to_string()),
        ("vigil.seed", cfg.seed.to_string()),
        ("vigil.unk_templates", id_ranges(&model.folded)),
    ];
    let proto = pb::ModelProto {
        ir_version: ONNX_IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: ONNX_OPSET,
        }],
        producer_name: "vigil".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: meta
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto {
                key: key.into(),
                value,
            })
            .collect(),
        ..Default::default()
    };
    Ok(proto.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::transformer::SequenceModel;
    use std::path::Path;
    use std::sync::OnceLock;

    // Synthetic shop traffic. Template ids:
    const HOME: u32 = 1;
    const BROWSE: u32 = 2;
    const PRODUCT: u32 = 3;
    const CART: u32 = 4;
    const CHECKOUT: u32 = 5;
    const PAY: u32 = 6;
    const CONFIRM: u32 = 7;
    const LOGIN_FORM: u32 = 8;
    const LOGIN: u32 = 9;
    const ACCOUNT: u32 = 10;
    const ORDERS: u32 = 11;
    const LOGOUT: u32 = 12;
    const SEARCH: u32 = 13;
    const RESULTS: u32 = 14;
    const FEED: u32 = 15;
    const ITEM: u32 = 16;
    /// Appears in exactly two sessions: below `unk_min_count`, so it trains as UNK.
    const RARE: u32 = 17;
    const N_TEMPLATES: usize = 20;

    fn flows() -> Vec<Vec<u32>> {
        vec![
            vec![HOME, BROWSE, PRODUCT, CART, CHECKOUT, PAY, CONFIRM],
            vec![HOME, LOGIN_FORM, LOGIN, ACCOUNT, ORDERS, LOGOUT],
            vec![SEARCH, RESULTS, PRODUCT, PRODUCT, CART],
            vec![FEED, ITEM, ITEM, FEED],
            vec![HOME, BROWSE, PRODUCT, BROWSE, PRODUCT],
        ]
    }

    /// Sessions of 2-5 flows with 3% noise (a random known template instead of the real one).
    fn sessions(n: usize, seed: u64) -> Vec<Vec<u32>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let flows = flows();
        let mut out: Vec<Vec<u32>> = (0..n)
            .map(|_| {
                let mut s = Vec::new();
                for _ in 0..rng.gen_range(2..=5) {
                    for &t in &flows[rng.gen_range(0..flows.len())] {
                        s.push(if rng.gen_bool(0.03) {
                            rng.gen_range(1..=ITEM)
                        } else {
                            t
                        });
                    }
                }
                s
            })
            .collect();
        out[0].push(RARE);
        out[1].insert(3, RARE);
        out
    }

    fn small_config() -> LmConfig {
        LmConfig {
            window: 8,
            d_model: 16,
            heads: 2,
            layers: 1,
            d_ff: 32,
            epochs: 6,
            batch_size: 32,
            learning_rate: 1e-2,
            max_windows: 1500,
            ..LmConfig::default()
        }
    }

    struct Trained {
        model: Model,
        report: TrainReport,
        onnx: Vec<u8>,
    }

    /// One training run shared by the tests: training dominates the debug-build test time.
    fn trained() -> &'static Trained {
        static CELL: OnceLock<Trained> = OnceLock::new();
        CELL.get_or_init(|| {
            let cfg = small_config();
            let data = sessions(400, 7);
            let mut calls = 0;
            let (model, report) = fit(&data, N_TEMPLATES, &cfg, |_, _, _| calls += 1).unwrap();
            assert!(calls > 0);
            let onnx = export_onnx(&model, N_TEMPLATES, &cfg).unwrap();
            Trained {
                model,
                report,
                onnx,
            }
        })
    }

    #[test]
    fn windows_are_left_aligned_and_cover_every_target() {
        let mut out = Windows::default();
        push_windows(&[5, 6], 4, 1, &mut out);
        assert_eq!(out.inputs, [BOS, 5, PAD, PAD]);
        assert_eq!(out.targets, [5, 6, PAD, PAD]);
        let mut out = Windows::default();
        let seq: Vec<u32> = (10..20).collect();
        push_windows(&seq, 4, 3, &mut out);
        // Starts 0, 3, 6 (= last): the last window ends with the last target.
        assert_eq!(out.count, 3);
        assert_eq!(&out.inputs[..4], [BOS, 10, 11, 12]);
        assert_eq!(&out.targets[8..], [16, 17, 18, 19]);
    }

    #[test]
    fn rare_templates_become_unk() {
        let a = vec![1, 1, 1, 2, 3, 3, 3, 0];
        let (map, rare) = token_map(&[&a], 5, 3);
        assert_eq!(
            map,
            [UNK, 1 + TEMPLATE_OFFSET, UNK, 3 + TEMPLATE_OFFSET, UNK]
        );
        assert_eq!(rare, 1);
        assert_eq!(id_ranges(&[2, 3, 4, 7, 9, 10]), "2-4,7,9-10");
        assert_eq!(id_ranges(&[]), "");
    }

    #[test]
    fn invalid_config_lists_every_problem() {
        let cfg = LmConfig {
            d_model: 30,
            heads: 4,
            learning_rate: 0.0,
            ..LmConfig::default()
        };
        let err = train(&[vec![1, 2, 3]], 4, &cfg, |_, _, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d_model") && err.contains("learning_rate"),
            "{err}"
        );
        let err = train(&[vec![], vec![]], 4, &LmConfig::default(), |_, _, _| {}).unwrap_err();
        assert!(matches!(err, LmTrainError::NotEnoughData(_)), "{err}");
    }

    #[test]
    fn same_seed_same_model() {
        let cfg = LmConfig {
            epochs: 1,
            max_windows: 64,
            ..small_config()
        };
        let data = sessions(40, 3);
        let (a, ra) = train(&data, N_TEMPLATES, &cfg, |_, _, _| {}).unwrap();
        let (b, rb) = train(&data, N_TEMPLATES, &cfg, |_, _, _| {}).unwrap();
        assert_eq!(ra.train_loss, rb.train_loss);
        assert!(a == b, "same seed, same data: the ONNX bytes differ");
        let other = LmConfig { seed: 1, ..cfg };
        let (c, _) = train(&data, N_TEMPLATES, &other, |_, _, _| {}).unwrap();
        assert!(a != c, "a different seed should give a different model");
    }

    #[test]
    fn validation_loss_falls_well_below_uniform() {
        let t = trained();
        let uniform = ((N_TEMPLATES + 2) as f64).ln();
        let best = t
            .report
            .validation_loss
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        assert!(t.report.validation_windows > 0);
        assert!(
            best < 0.5 * uniform,
            "best validation loss {best} vs ln(vocab) {uniform}: {:?}",
            t.report
        );
        assert!(
            t.report.validation_loss[0] > best || t.report.epochs_run == 1,
            "{:?}",
            t.report
        );
    }

    /// Runs the exported bytes with plain tract, independent of the serving module.
    fn tract_logits(bytes: &[u8], flat: &[u32], rows: usize, w: usize) -> Vec<f32> {
        use tract_onnx::prelude::*;
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let ids: Vec<i64> = flat.iter().map(|&x| i64::from(x)).collect();
        let input = Tensor::from_shape(&[rows, w], &ids).unwrap();
        let out = plan.run(tvec!(input.into())).unwrap();
        out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn onnx_logits_match_candle() {
        let t = trained();
        let w = t.model.dims.window;
        let rows: Vec<Vec<u32>> = vec![
            vec![BOS, 3, 4, 5, 6, PAD, PAD, PAD],
            vec![7, 8, 9, 10, 11, 12, 13, 14],
            vec![BOS, PAD, PAD, PAD, PAD, PAD, PAD, PAD],
        ];
        let flat: Vec<u32> = rows.concat();
        let ids = Tensor::from_slice(&flat, (rows.len(), w), &Device::Cpu).unwrap();
        let expected: Vec<f32> = t
            .model
            .forward(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();

        let got = tract_logits(&t.onnx, &flat, rows.len(), w);
        assert_eq!(got.len(), expected.len());
        let max_diff = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 1e-3, "max |tract - candle| = {max_diff}");
    }

    #[test]
    fn served_model_scores_context() {
        let t = trained();
        let m = SequenceModel::load(&t.onnx, Path::new("test.onnx")).unwrap();
        assert_eq!(
            (m.window(), m.vocab(), m.n_templates()),
            (8, N_TEMPLATES + 2, N_TEMPLATES)
        );
        let in_order = m
            .nll(&[HOME, BROWSE, PRODUCT, CART, CHECKOUT], true, PAY)
            .unwrap();
        let out_of_order = m.nll(&[HOME, BROWSE], true, PAY).unwrap();
        assert!(in_order < 1.0, "pay after checkout: {in_order}");
        assert!(
            out_of_order > in_order + 2.0,
            "pay after browse {out_of_order} vs after checkout {in_order}"
        );
        // The same holds without BOS, deep into a session (full window, the sliced plan).
        let long = [
            FEED, ITEM, ITEM, FEED, HOME, BROWSE, PRODUCT, CART, CHECKOUT,
        ];
        let deep_in_order = m.nll(&long, false, PAY).unwrap();
        let deep_out_of_order = m.nll(&long[..6], false, PAY).unwrap();
        assert!(
            deep_out_of_order > deep_in_order + 2.0,
            "{deep_out_of_order} vs {deep_in_order}"
        );

        // Unseen and rare templates score as UNK: finite, and not absurd.
        let rare = m.nll(&[HOME, BROWSE], true, RARE).unwrap();
        let unseen = m.nll(&[HOME, BROWSE], true, 19).unwrap();
        let beyond = m.nll(&[HOME, BROWSE], true, 10_000).unwrap();
        assert!(rare.is_finite() && rare < 12.0, "{rare}");
        assert_eq!(rare, unseen);
        assert_eq!(rare, beyond);

        // Offline batch scoring agrees with the request-path call.
        let items: Vec<(&[u32], bool, u32)> = vec![
            (&long[..], false, PAY),
            (&long[..6], false, PAY),
            (&[HOME, BROWSE][..], true, RARE),
        ];
        let batch = m.nll_batch(&items).unwrap();
        for (b, one) in batch.iter().zip([deep_in_order, deep_out_of_order, rare]) {
            assert!((b - one).abs() < 1e-4, "{b} vs {one}");
        }
    }

    #[test]
    fn a_page_that_opens_sessions_is_never_out_of_order() {
        use crate::detectors::transformer::{FreshStart, NllCalibration, Transformer};
        use crate::template::TemplateId;
        let t = trained();
        let load = || SequenceModel::load(&t.onnx, Path::new("test.onnx")).unwrap();
        let m = load();
        let fresh = m.fresh_session_nlls().unwrap();
        assert_eq!(fresh.len(), N_TEMPLATES + 1);
        for id in [HOME, PAY, RARE, 19] {
            let one = m.nll(&[], true, id).unwrap();
            assert!((fresh[id as usize] - one).abs() < 1e-4, "{id}: {one}");
        }
        // Sessions open with HOME, SEARCH or FEED, never with PAY.
        assert!(fresh[HOME as usize] < 2.0, "{fresh:?}");
        assert!(fresh[PAY as usize] > 4.0, "{fresh:?}");

        let floor = FreshStart::of(&m, 3.0, None).unwrap();
        assert!(floor.opener(HOME).is_some() && floor.opener(PAY).is_none());
        // HOME where PAY was due: surprising after the context, ordinary as a new visit.
        let home_mid = m
            .nll(&[HOME, BROWSE, PRODUCT, CART, CHECKOUT], true, HOME)
            .unwrap();
        assert!(
            home_mid > fresh[HOME as usize] + 1.0,
            "{home_mid} vs {fresh:?}"
        );
        assert_eq!(floor.apply(HOME, home_mid), fresh[HOME as usize]);
        // PAY after browsing keeps its NLL after the context, even where that is above its
        // NLL as a first request: paying is not how sessions start.
        let pay = m.nll(&[HOME, BROWSE], true, PAY).unwrap();
        assert_eq!(floor.apply(PAY, pay), pay);
        assert_eq!(floor.apply(PAY, 100.0), 100.0);
        // Ids beyond the vocabulary are UNK; a cut at 0 floors nothing.
        assert_eq!(floor.opener(10_000).is_some(), fresh[N_TEMPLATES] < 3.0);
        assert_eq!(
            FreshStart::of(&m, 0.0, None).unwrap().apply(HOME, home_mid),
            home_mid
        );

        // The serving detector floors only when its calibration was made with the floor.
        let calibration = NllCalibration {
            center: 0.5,
            threshold: 4.0,
            target_fpr: 0.005,
            calibrated_on: 1000,
            opener_below: Some(3.0),
        };
        let ctx: Vec<TemplateId> = [HOME, BROWSE, PRODUCT, CART, CHECKOUT]
            .map(TemplateId)
            .to_vec();
        let floored = Transformer::new(load(), calibration, None).unwrap();
        let plain = Transformer::new(
            load(),
            NllCalibration {
                opener_below: None,
                ..calibration
            },
            None,
        )
        .unwrap();
        let f = floored.score(&ctx, true, TemplateId(HOME)).unwrap();
        let p = plain.score(&ctx, true, TemplateId(HOME)).unwrap();
        assert!(
            (f.nll - f64::from(fresh[HOME as usize])).abs() < 1e-6,
            "{f:?}"
        );
        assert!((p.nll - f64::from(home_mid)).abs() < 1e-6, "{p:?}");
        assert!(f.score < p.score);
        assert!(!NllCalibration {
            opener_below: Some(f64::NAN),
            ..calibration
        }
        .valid());
    }

    #[test]
    fn at_a_lanes_start_the_counts_vouch_for_what_is_rare() {
        use crate::detectors::transformer::{
            counted_from, FreshStart, NllCalibration, Transformer, Transitions,
        };
        use crate::template::TemplateId;
        let data = sessions(400, 7);
        let counts = Transitions::count(&data);
        let opened = |t: u32| data.iter().filter(|s| s.first() == Some(&t)).count();
        // 400 sessions: most open with HOME; PAY opens one only through noise, if at all.
        assert!(opened(HOME) > 150 && opened(PAY) <= 2);
        let start = counted_from(0, None, true).unwrap();
        assert!(counts.nll(start, HOME) < 1.0);
        assert!(counts.nll(start, PAY) > 4.0, "{}", counts.nll(start, PAY));
        // A predecessor seen twice vouches for nothing.
        assert_eq!(counts.nll(RARE, CONFIRM), 0.0);
        // Only a lane's first two requests are counted.
        assert_eq!(counted_from(1, Some(CART), true), Some(CART));
        assert_eq!(counted_from(1, Some(CART), false), None);
        assert_eq!(counted_from(2, Some(CART), true), None);

        let t = trained();
        let load = || SequenceModel::load(&t.onnx, Path::new("test.onnx")).unwrap();
        let calibration = NllCalibration {
            center: 0.5,
            threshold: 4.0,
            target_fpr: 0.005,
            calibrated_on: 1000,
            opener_below: None,
        };
        let counted = Transformer::new(load(), calibration, Some(counts.clone())).unwrap();
        let plain = Transformer::new(load(), calibration, None).unwrap();
        let ids = |v: &[u32]| v.iter().copied().map(TemplateId).collect::<Vec<_>>();
        let score = |m: &Transformer, ctx: &[u32], current| {
            m.score(&ids(ctx), true, TemplateId(current)).unwrap().nll
        };
        for (ctx, current) in [
            (&[][..], PAY),
            (&[][..], HOME),
            (&[CART][..], LOGOUT),
            (&[HOME][..], BROWSE),
            (&[HOME, BROWSE, PRODUCT][..], LOGOUT),
        ] {
            let model = score(&plain, ctx, current);
            let prev = counted_from(ctx.len(), ctx.last().copied(), true);
            let vouched = prev.map_or(0.0, |p| f64::from(counts.nll(p, current)));
            let got = score(&counted, ctx, current);
            assert!(
                (got - model.max(vouched)).abs() < 1e-5,
                "{ctx:?} {current}: {got} vs {model} and {vouched}"
            );
        }
        // Logging out right after the cart: the model may find it plausible, the counts do not.
        let first_steps = score(&counted, &[CART], LOGOUT);
        assert!(first_steps > 3.0, "{first_steps}");
        // A longer context is the model's alone.
        let deep = [HOME, BROWSE, CART];
        assert_eq!(score(&counted, &deep, LOGOUT), score(&plain, &deep, LOGOUT));

        // The openers' floor reads the counts too: where every counted session opened with
        // HOME, FEED opens none, whatever the model says of it as a first request.
        let m = load();
        let home_only = Transitions::count(&vec![vec![HOME, BROWSE]; 10_000]);
        let (with, without) = (
            FreshStart::of(&m, 4.0, Some(&home_only)).unwrap(),
            FreshStart::of(&m, 4.0, None).unwrap(),
        );
        assert!(without.opener(FEED).is_some() && with.opener(FEED).is_none());
        assert!(without.opener(HOME).is_some() && with.opener(HOME).is_some());

        // The unknown template (0) pools routes training never saw: its counts, before or
        // after, vouch for nothing, where a known route as rare as it keeps its own.
        let mut rare_starts = vec![vec![HOME, BROWSE]; 9_998];
        rare_starts.extend([vec![0, HOME], vec![FEED, HOME]]);
        let rare_starts = Transitions::count(&rare_starts);
        assert!(rare_starts.nll(start, FEED) > 7.0);
        assert_eq!(rare_starts.nll(start, 0), 0.0);
        assert_eq!(rare_starts.nll(0, LOGOUT), 0.0);
        let served = Transformer::new(load(), calibration, Some(rare_starts)).unwrap();
        assert_eq!(score(&served, &[], 0), score(&plain, &[], 0));
        assert!(score(&served, &[], FEED) > 7.0);

        // Kept in `transformer.json` as sorted lists; damaged entries are refused.
        let json = serde_json::to_string(&counts).unwrap();
        assert_eq!(serde_json::from_str::<Transitions>(&json).unwrap(), counts);
        assert_eq!(
            json,
            serde_json::to_string(&Transitions::count(&data)).unwrap()
        );
        for bad in [
            r#"{"start": [[1, 0]], "after": []}"#,
            r#"{"start": [[1, 3], [1, 2]], "after": []}"#,
            r#"{"start": [], "after": [[1, 2, 5], [1, 2, 5]]}"#,
            r#"{"start": [[4294967295, 1]], "after": []}"#,
        ] {
            let err = serde_json::from_str::<Transitions>(bad).unwrap_err();
            assert!(err.to_string().contains("transition"), "{bad}: {err}");
        }
    }
}

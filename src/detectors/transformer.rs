//! Serves vigil's sequence model: the negative log-likelihood of a client's current request
//! template given the previous ones of its user agent (floored for pages that open sessions:
//! `FreshStart`), from an ONNX causal LM run by tract.
//!
//! Sits in `detectors/`, on the request path: after `load` (done off the request path, in a
//! model-set reload) every call is pure CPU work on the caller's thread: no I/O, no locks, no
//! allocation beyond small per-call buffers, never blocks. tract runs single-threaded by default.
//!
//! I/O contract (ours from `learn/transformer.rs`, or any exporter such as PyTorch):
//! input `ids`: int64 `[batch, W]`, output `logits`: float32 `[batch, W, vocab]`, causal, with
//! tokens `0 = PAD`, `1 = BOS`, `2 + t` for template id `t` (token 2 = UNK), sequences
//! left-aligned and PAD-filled at the end. W and vocab are read from the graph, not from
//! metadata, so a foreign model with the same contract loads too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::Slice;

const PAD: i64 = 0;
const BOS: i64 = 1;
const UNK: i64 = 2;
const TEMPLATE_OFFSET: i64 = 2;
/// Rows per run of the offline batch plan; batching gains little on CPU, but it amortises the
/// per-run overhead when calibrating on many windows.
const BATCH_ROWS: usize = 64;
/// Optional metadata written by vigil's trainer: template ids folded into UNK, as `"3-5,9"`.
const UNK_TEMPLATES_KEY: &str = "vigil.unk_templates";

#[derive(Debug, thiserror::Error)]
pub enum TransformerError {
    #[error("cannot load transformer model {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    #[error("transformer model {} breaks vigil's I/O contract (ids: int64 [batch, W] -> logits: float32 [batch, W, vocab >= 3]): {reason}", path.display())]
    Contract { path: PathBuf, reason: String },
    #[error("transformer model {} failed to run: {reason}", path.display())]
    Inference { path: PathBuf, reason: String },
}

type Plan = Arc<TypedRunnableModel>;

/// A loaded, optimised sequence model. Cheap to share (`Arc` plans); `Send + Sync`.
pub struct SequenceModel {
    path: PathBuf,
    window: usize,
    vocab: usize,
    /// Batch 1, only the last position's logits: the common case once a client has a full
    /// window of history. Slicing before optimisation lets tract drop the vocab projection
    /// (and more) for the other positions.
    last: Plan,
    /// Batch 1, all positions: used while a session is shorter than the window.
    full: Plan,
    /// `batch_rows` rows, all positions: offline scoring and calibration.
    batch: Plan,
    batch_rows: usize,
    /// `folded[t]`: template `t` was folded into UNK at training (rare), so it is scored as UNK.
    folded: Vec<bool>,
}

impl std::fmt::Debug for SequenceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceModel")
            .field("path", &self.path)
            .field("window", &self.window)
            .field("vocab", &self.vocab)
            .finish_non_exhaustive()
    }
}

fn tensor_type(v: &pb::ValueInfoProto) -> Option<&pb::type_proto::Tensor> {
    match v.r#type.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(t) => Some(t),
    }
}

/// A dimension as declared: `Some(n)` when fixed, `None` when symbolic or absent.
fn fixed_dims(t: &pb::type_proto::Tensor) -> Option<Vec<Option<i64>>> {
    use pb::tensor_shape_proto::dimension::Value;
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Value::DimValue(v)) if v > 0 => Some(v),
                _ => None,
            })
            .collect(),
    )
}

impl SequenceModel {
    /// Parses, checks and optimises a model. `path` is only used in error messages.
    pub fn load(bytes: &[u8], path: &Path) -> Result<SequenceModel, TransformerError> {
        let load_err = |reason: String| TransformerError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let contract = |reason: String| TransformerError::Contract {
            path: path.to_path_buf(),
            reason,
        };

        let proto = pb::ModelProto::decode(bytes).map_err(|e| {
            load_err(format!(
                "not an ONNX model (protobuf decode failed: {e}); truncated or corrupt file?"
            ))
        })?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| load_err("the ONNX model has no graph".into()))?;

        // Older exporters list initializers among the inputs; only the others are fed.
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(contract(format!(
                "expected exactly one input, found {}",
                inputs.len()
            )));
        };
        let in_type = tensor_type(input)
            .ok_or_else(|| contract(format!("input {:?} is not a tensor", input.name)))?;
        if in_type.elem_type != pb::tensor_proto::DataType::Int64 as i32 {
            return Err(contract(format!(
                "input {:?} has element type {}, expected int64",
                input.name,
                pb::tensor_proto::DataType::try_from(in_type.elem_type)
                    .map(|d| d.as_str_name())
                    .unwrap_or("unknown")
            )));
        }
        let in_dims = fixed_dims(in_type)
            .ok_or_else(|| contract(format!("input {:?} has no declared shape", input.name)))?;
        let window = match in_dims.as_slice() {
            [_, Some(w)] if *w >= 2 => *w as usize,
            [_, _] => {
                return Err(contract(format!(
                    "input {:?} must have a fixed window length >= 2 as its second dimension",
                    input.name
                )))
            }
            other => {
                return Err(contract(format!(
                    "input {:?} has rank {}, expected 2",
                    input.name,
                    other.len()
                )))
            }
        };
        // A fixed batch dimension (an export without dynamic axes) is honoured, not rejected.
        let batch_rows = match in_dims[0] {
            Some(b) => b as usize,
            None => BATCH_ROWS,
        };
        if graph.output.len() != 1 {
            return Err(contract(format!(
                "expected exactly one output, found {}",
                graph.output.len()
            )));
        }

        // tract can panic on some malformed graphs; a bad model file must never take the
        // process down, so the whole build runs under catch_unwind.
        let built = catch_unwind(AssertUnwindSafe(|| build_plans(&proto, window, batch_rows)));
        let (vocab, last, full, batch) = match built {
            Ok(Ok(p)) => p,
            Ok(Err(BuildError::Contract(reason))) => return Err(contract(reason)),
            Ok(Err(BuildError::Tract(reason))) => return Err(load_err(reason)),
            Err(_) => return Err(load_err("tract panicked while analysing the graph".into())),
        };
        let n_templates = vocab - TEMPLATE_OFFSET as usize;
        let folded = match proto
            .metadata_props
            .iter()
            .find(|e| e.key == UNK_TEMPLATES_KEY)
        {
            Some(e) => parse_id_ranges(&e.value, n_templates)
                .map_err(|reason| load_err(format!("metadata {UNK_TEMPLATES_KEY}: {reason}")))?,
            // A foreign model: every template in range has its own token.
            None => vec![false; n_templates],
        };
        Ok(SequenceModel {
            path: path.to_path_buf(),
            window,
            vocab,
            last,
            full,
            batch,
            batch_rows,
            folded,
        })
    }

    /// Tokens per model input (W).
    pub fn window(&self) -> usize {
        self.window
    }

    /// Output vocabulary: PAD, BOS and one token per template id.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Template ids the model knows (`0..n_templates`); larger ids are scored as UNK.
    pub fn n_templates(&self) -> usize {
        self.vocab - TEMPLATE_OFFSET as usize
    }

    fn token(&self, template: u32) -> i64 {
        match self.folded.get(template as usize) {
            Some(false) => i64::from(template) + TEMPLATE_OFFSET,
            _ => UNK,
        }
    }

    /// Fills `ids` (length W) and returns the position whose logits predict the next template.
    fn encode(&self, context: &[u32], session_start: bool, ids: &mut [i64]) -> usize {
        ids.fill(PAD);
        let w = self.window;
        // Without any context, the best guess is "a session starts here".
        if context.is_empty() || (session_start && context.len() < w) {
            ids[0] = BOS;
            for (slot, &t) in ids[1..].iter_mut().zip(context) {
                *slot = self.token(t);
            }
            return context.len();
        }
        let recent = &context[context.len().saturating_sub(w)..];
        for (slot, &t) in ids.iter_mut().zip(recent) {
            *slot = self.token(t);
        }
        recent.len() - 1
    }

    fn inference_err(&self, e: impl std::fmt::Display) -> TransformerError {
        TransformerError::Inference {
            path: self.path.clone(),
            reason: format!("{e:#}"),
        }
    }

    /// Negative log-likelihood (nats) of template `current` after `context` (template ids, most
    /// recent last; only the last W are used). `session_start` says the context is the client's
    /// whole history, so it is preceded by BOS when it fits.
    pub fn nll(
        &self,
        context: &[u32],
        session_start: bool,
        current: u32,
    ) -> Result<f32, TransformerError> {
        self.next_logits(context, session_start, |row| {
            nll_of(row, self.token(current) as usize)
        })
    }

    /// The NLL of every template as a client's first request (index = template id; the last
    /// entry is UNK, for ids beyond the model's vocabulary): one run, from BOS alone.
    pub fn fresh_session_nlls(&self) -> Result<Vec<f32>, TransformerError> {
        self.next_logits(&[], true, |row| {
            (0..=self.n_templates() as u32)
                .map(|t| nll_of(row, self.token(t) as usize))
                .collect()
        })
    }

    /// Runs the model on `context` and hands `f` the logits that predict the next template.
    fn next_logits<R>(
        &self,
        context: &[u32],
        session_start: bool,
        f: impl FnOnce(&[f32]) -> R,
    ) -> Result<R, TransformerError> {
        let w = self.window;
        let mut ids = vec![PAD; w];
        let pos = self.encode(context, session_start, &mut ids);
        let input = Tensor::from_shape(&[1, w], &ids).map_err(|e| self.inference_err(e))?;
        let (plan, row) = if pos == w - 1 {
            (&self.last, 0)
        } else {
            (&self.full, pos)
        };
        let out = plan
            .run(tvec!(input.into()))
            .map_err(|e| self.inference_err(e))?;
        let logits = out
            .first()
            .ok_or_else(|| self.inference_err("the model produced no output"))?
            .try_as_plain_ram()
            .and_then(|t| t.as_slice::<f32>())
            .map_err(|e| self.inference_err(e))?;
        let v = self.vocab;
        let row = logits
            .get(row * v..(row + 1) * v)
            .ok_or_else(|| self.inference_err("the output is smaller than its declared shape"))?;
        Ok(f(row))
    }

    /// `nll` for many `(context, session_start, current)` items; same results, fewer runs.
    /// Meant for offline scoring and calibration, not the request path.
    pub fn nll_batch(&self, items: &[(&[u32], bool, u32)]) -> Result<Vec<f32>, TransformerError> {
        let (w, v, rows) = (self.window, self.vocab, self.batch_rows);
        let mut out = Vec::with_capacity(items.len());
        let mut ids = vec![PAD; rows * w];
        let mut positions = Vec::with_capacity(rows);
        for chunk in items.chunks(rows) {
            positions.clear();
            for (r, (context, start, _)) in chunk.iter().enumerate() {
                positions.push(self.encode(context, *start, &mut ids[r * w..(r + 1) * w]));
            }
            // Unused rows of the last chunk still run: the plan has a fixed batch size.
            for r in chunk.len()..rows {
                let row = &mut ids[r * w..(r + 1) * w];
                row.fill(PAD);
                row[0] = BOS;
            }
            let input = Tensor::from_shape(&[rows, w], &ids).map_err(|e| self.inference_err(e))?;
            let res = self
                .batch
                .run(tvec!(input.into()))
                .map_err(|e| self.inference_err(e))?;
            let logits = res
                .first()
                .ok_or_else(|| self.inference_err("the model produced no output"))?
                .try_as_plain_ram()
                .and_then(|t| t.as_slice::<f32>())
                .map_err(|e| self.inference_err(e))?;
            for (r, ((_, _, current), pos)) in chunk.iter().zip(&positions).enumerate() {
                let at = (r * w + pos) * v;
                let row = logits.get(at..at + v).ok_or_else(|| {
                    self.inference_err("the output is smaller than its declared shape")
                })?;
                out.push(nll_of(row, self.token(*current) as usize));
            }
        }
        Ok(out)
    }
}

/// `-log softmax(logits)[target]`, computed in f64 with the max subtracted so large logits
/// neither overflow nor lose the target's precision.
fn nll_of(logits: &[f32], target: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let picked = logits.get(target).copied().unwrap_or(f32::NEG_INFINITY) as f64;
    (max + sum.ln() - picked) as f32
}

/// Parses `"3-5,9"` into a mask over `0..n`; ids outside the vocabulary are an error because
/// they mean the metadata belongs to another model.
fn parse_id_ranges(s: &str, n: usize) -> Result<Vec<bool>, String> {
    let mut mask = vec![false; n];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let parse = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("{part:?} is not an id or an id range"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b || b >= n {
            return Err(format!("{part:?} is outside the model's {n} templates"));
        }
        mask[a..=b].iter_mut().for_each(|m| *m = true);
    }
    Ok(mask)
}

enum BuildError {
    Contract(String),
    Tract(String),
}

fn tract_err(stage: &'static str) -> impl Fn(TractError) -> BuildError {
    move |e| BuildError::Tract(format!("{stage}: {e:#}"))
}

/// Analyses the graph at batch 1 to learn and check the output shape, then optimises the three
/// plans. Returns `(vocab, last, full, batch)`.
fn build_plans(
    proto: &pb::ModelProto,
    w: usize,
    batch_rows: usize,
) -> Result<(usize, Plan, Plan, Plan), BuildError> {
    let model = tract_onnx::onnx()
        .model_for_proto_model(proto)
        .map_err(tract_err("translating the ONNX graph"))?;
    let with_batch = |rows: usize| -> Result<TypedModel, BuildError> {
        model
            .clone()
            .with_input_fact(
                0,
                InferenceFact::dt_shape(i64::datum_type(), tvec!(rows, w)),
            )
            .and_then(|m| m.into_typed())
            .map_err(tract_err("analysing the graph"))
    };
    let typed = with_batch(1)?;
    let fact = typed
        .output_fact(0)
        .map_err(tract_err("reading the output"))?;
    if fact.datum_type != f32::datum_type() {
        return Err(BuildError::Contract(format!(
            "output has type {:?}, expected float32",
            fact.datum_type
        )));
    }
    let dims: Option<Vec<usize>> = fact.shape.as_concrete().map(|d| d.to_vec());
    let vocab = match dims.as_deref() {
        Some([1, ww, v]) if *ww == w && *v >= 3 => *v,
        _ => {
            return Err(BuildError::Contract(format!(
                "for input [1, {w}] the output shape is {:?}, expected [1, {w}, vocab >= 3]",
                fact.shape
            )))
        }
    };

    let full = typed
        .clone()
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(tract_err("optimising"))?;

    let mut sliced = typed;
    let out = sliced
        .output_outlets()
        .map_err(tract_err("reading the output"))?[0];
    let last = sliced
        .wire_node("vigil.last_position", Slice::new(1, w - 1, w), &[out])
        .map_err(tract_err("slicing the last position"))?;
    sliced
        .select_output_outlets(&last)
        .map_err(tract_err("slicing the last position"))?;
    let last = sliced
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(tract_err("optimising"))?;

    let batch = if batch_rows == 1 {
        full.clone()
    } else {
        with_batch(batch_rows)?
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(tract_err("optimising the batch plan"))?
    };
    Ok((vocab, last, full, batch))
}

/// How the transformer's NLL maps to a calibrated score: measured on the requests of held-out
/// clients (never trained on), so that `threshold` lets through the target share of normal
/// requests.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NllCalibration {
    /// Median NLL of held-out normal requests: calibrated to 0.
    pub center: f64,
    /// NLL above which `target_fpr` of held-out normal requests lie: calibrated to 0.5.
    pub threshold: f64,
    pub target_fpr: f64,
    pub calibrated_on: usize,
    /// Templates whose NLL as a client's first request is below this open sessions, and
    /// their NLL is floored there (`FreshStart`). Absent in model sets trained before the
    /// floor, which keep scoring the plain NLL they were calibrated on.
    #[serde(default)]
    pub opener_below: Option<f64>,
}

impl NllCalibration {
    /// From held-out `(client, NLL)` pairs (any order); `None` when there are too few to
    /// calibrate on. The threshold lets `target_fpr` of
    /// them through, but no client counts for more than `TAIL_CLIENT_SHARE` of that tail. A
    /// held-out client is one the model never saw, and a client with habits of its own (an
    /// API consumer paging through a route nobody else uses) is surprising request after
    /// request: on the shipped demo day one such client made 63 of the 64 most surprising
    /// held-out requests and set the threshold at 12.7 nats, against 6.4 for the others.
    pub fn from_client_nlls(mut nlls: Vec<(u64, f64)>, target_fpr: f64) -> Option<NllCalibration> {
        nlls.retain(|(_, x)| x.is_finite());
        if nlls.len() < 50 {
            return None;
        }
        nlls.sort_by(|a, b| b.1.total_cmp(&a.1));
        let budget = ((nlls.len() as f64) * target_fpr).floor() as usize;
        let per_client = ((budget as f64) * TAIL_CLIENT_SHARE).ceil().max(1.0) as usize;
        let mut seen: std::collections::HashMap<u64, usize> = Default::default();
        let mut counted = 0;
        let mut threshold = nlls[nlls.len() - 1].1;
        for (c, x) in &nlls {
            let n = seen.entry(*c).or_default();
            *n += 1;
            counted += (*n <= per_client) as usize;
            if counted >= budget.max(1) {
                threshold = *x;
                break;
            }
        }
        let center = nlls[nlls.len() / 2].1.min(threshold);
        Some(NllCalibration {
            center,
            threshold,
            target_fpr,
            calibrated_on: nlls.len(),
            opener_below: None,
        })
    }

    /// Calibrated score: the median at 0, the threshold at 0.5, and as far again above the
    /// threshold as it is above the median at 1.
    pub fn score(&self, nll: f64) -> f64 {
        let spread = (self.threshold - self.center).max(0.5);
        crate::ensemble::calibrate(nll, self.center, self.threshold, self.threshold + spread)
    }

    pub fn valid(&self) -> bool {
        self.center.is_finite()
            && self.threshold.is_finite()
            && self.center <= self.threshold
            && self.opener_below.is_none_or(f64::is_finite)
    }
}

/// Most of the calibration tail (the requests above the threshold) one held-out client may
/// make: a tenth.
const TAIL_CLIENT_SHARE: f64 = 0.1;

/// A page that opens sessions is never out of order: anyone can type its URL, follow a
/// bookmark or a search result, or open it in a new tab. So a template whose NLL as a client's
/// first request is ordinary (below `cut`, the threshold calibrated without this floor) scores
/// the smaller of its NLL after the context and as a first request. Other templates
/// (paying, an admin page, a refund: whatever is itself surprising as a first request) keep
/// their NLL after the context, so a payment after a product page stays more surprising than
/// a payment out of nowhere. Without the floor most of the transformer's false positives were
/// landing pages (`GET /`, a product list, an ad's landing page) requested mid-session, above
/// all by the people behind one NAT address, whose interleaved sequences make any page look
/// out of place (measured in README.md, Detection quality).
#[derive(Debug, Clone)]
pub struct FreshStart {
    /// NLL of each template id as a first request; the last entry is UNK's.
    fresh: Vec<f32>,
    cut: f64,
}

impl FreshStart {
    /// With `transitions`, a template's NLL as a first request is at least what training's
    /// counts vouch for (`Transitions`), so a template the model finds plausible as an opener
    /// but that no training sequence opened with is no opener.
    pub fn of(
        model: &SequenceModel,
        cut: f64,
        transitions: Option<&Transitions>,
    ) -> Result<FreshStart, TransformerError> {
        let mut fresh = model.fresh_session_nlls()?;
        for (id, f) in fresh.iter_mut().enumerate() {
            *f = with_counts(transitions, Some(START), id as u32, *f);
        }
        Ok(FreshStart { fresh, cut })
    }

    /// Does template `current` (ids beyond the model's vocabulary are UNK) open sessions?
    pub fn opener(&self, current: u32) -> Option<f32> {
        let last = self.fresh.len().saturating_sub(1);
        let fresh = *self.fresh.get((current as usize).min(last))?;
        (f64::from(fresh) < self.cut).then_some(fresh)
    }

    /// The NLL scored for template `current`, given `nll`, its NLL after the context.
    pub fn apply(&self, current: u32, nll: f32) -> f32 {
        self.opener(current).map_or(nll, |fresh| nll.min(fresh))
    }
}

/// Stands for "no previous request" among `Transitions`' predecessors.
const START: u32 = u32::MAX;

/// How often each template followed each other one (or opened a sequence) in the sequences
/// the model was trained on. At the start of a client lane the model has one request of
/// context or none, and training's counts of exactly that context are large (every
/// sequence starts; a landing page opens thousands), so they say what is rare better than a
/// small network does: on a simulated site (`--seed 16`) the model put a refund through the
/// API at 4.5 nats as a lane's first request or right after the home page, a step about one
/// in ninety, where no training sequence had it (0 of ~2,900 followers of the home page).
/// So for a context of at most one template (`counted_from`) the NLL scored is at least
/// -ln of an upper bound on the transition's rate, `(c + 1 + 2·sqrt(c + 1)) / n` for `c` of
/// `n` (about two standard deviations above the count, and three events when there were
/// none: the rule of three), so a context seen a few times vouches for little and the
/// model's NLL stands. Longer contexts are the model's alone: there its reading of the
/// steps before the last is the point, and a floor from the last step's counts at every
/// position ranked contextual requests worse on five of six simulated sites (README,
/// Detection quality).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "TransitionCounts", into = "TransitionCounts")]
pub struct Transitions {
    /// (predecessor or `START`, template) -> times.
    pairs: std::collections::HashMap<(u32, u32), u32>,
    /// Predecessor (or `START`) -> times it was followed by anything.
    from: std::collections::HashMap<u32, u64>,
}

/// `Transitions` as stored in `transformer.json`, sorted so that training writes the same
/// bytes for the same sequences.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TransitionCounts {
    /// `[template, times]`: sequences that opened with the template.
    start: Vec<(u32, u32)>,
    /// `[previous, template, times]`.
    after: Vec<(u32, u32, u32)>,
}

impl Transitions {
    /// Counts the transitions of `sequences` (template ids, in order).
    pub fn count<S: AsRef<[u32]>>(sequences: &[S]) -> Transitions {
        let mut t = Transitions::default();
        for seq in sequences {
            let mut prev = START;
            for &current in seq.as_ref() {
                t.add(prev, current, 1);
                prev = current;
            }
        }
        t
    }

    fn add(&mut self, prev: u32, current: u32, times: u32) {
        let c = self.pairs.entry((prev, current)).or_default();
        *c = c.saturating_add(times);
        *self.from.entry(prev).or_default() += u64::from(times);
    }

    /// The largest template id counted (`None` when nothing was).
    pub fn max_template(&self) -> Option<u32> {
        self.pairs
            .keys()
            .flat_map(|&(p, c)| [p, c])
            .filter(|&t| t != START)
            .max()
    }

    /// The NLL the counts vouch for `current` after `prev` (`counted_from`).
    ///
    /// Nothing for the unknown template, before or after: it pools every route the vocabulary
    /// lacks, above all routes added since training, so the few training sequences that
    /// opened with some unknown request say nothing about this one (counted, a `POST` to a
    /// route added after training was flagged as each client's first request to it). A known route too rare
    /// for the model keeps its counts: those are its own, and a refund no training sequence
    /// opened with is what the floor is for (`--seed 16`).
    pub fn nll(&self, prev: u32, current: u32) -> f32 {
        let unknown = crate::template::TemplateId::UNKNOWN.0;
        if current == unknown || prev == unknown {
            return 0.0;
        }
        let n = self.from.get(&prev).copied().unwrap_or(0) as f64;
        let c = f64::from(self.pairs.get(&(prev, current)).copied().unwrap_or(0));
        let upper = (c + 1.0 + 2.0 * (c + 1.0).sqrt()) / n.max(1.0);
        (-upper.min(1.0).ln()) as f32
    }
}

/// The predecessor whose counts floor a request's NLL (`Transitions`), from its context
/// (`len` templates, the most recent `last`): the start for no context, the one template of
/// a whole history of one, none for anything longer.
pub fn counted_from(len: usize, last: Option<u32>, session_start: bool) -> Option<u32> {
    match (len, last) {
        (0, _) => Some(START),
        (1, Some(p)) if session_start => Some(p),
        _ => None,
    }
}

/// `nll`, the model's, raised to what `transitions` vouch for `current` after `prev`
/// (`counted_from`; `None`: the context is the model's alone).
pub fn with_counts(
    transitions: Option<&Transitions>,
    prev: Option<u32>,
    current: u32,
    nll: f32,
) -> f32 {
    match (transitions, prev) {
        (Some(t), Some(p)) => nll.max(t.nll(p, current)),
        _ => nll,
    }
}

impl From<Transitions> for TransitionCounts {
    fn from(t: Transitions) -> Self {
        let mut start = Vec::new();
        let mut after = Vec::new();
        for (&(p, c), &n) in &t.pairs {
            if p == START {
                start.push((c, n));
            } else {
                after.push((p, c, n));
            }
        }
        start.sort_unstable();
        after.sort_unstable();
        TransitionCounts { start, after }
    }
}

impl TryFrom<TransitionCounts> for Transitions {
    type Error = String;

    fn try_from(f: TransitionCounts) -> Result<Self, String> {
        let mut t = Transitions::default();
        let entries = f
            .start
            .iter()
            .map(|&(c, n)| (START, c, n))
            .chain(f.after.iter().copied());
        for (p, c, n) in entries {
            if n == 0 || c == START {
                return Err(format!("transition {p} -> {c} counted {n} times"));
            }
            if t.pairs.contains_key(&(p, c)) {
                return Err(format!("transition {p} -> {c} listed twice"));
            }
            t.add(p, c, n);
        }
        Ok(t)
    }
}

/// The transformer's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransformerScore {
    pub nll: f64,
    pub score: f64,
    pub threshold: f64,
}

/// Slots of the score cache (a power of two).
const CACHE_SLOTS: usize = 1 << 16;
const CACHE_SHARDS: usize = 64;

/// The sequence model as the pipeline uses it: calibrated, and with a bounded cache of recent
/// (context, template) scores. Site traffic repeats itself (the same few navigation paths,
/// crawlers, API clients polling), and the model's answer depends only on the last W
/// templates, so most requests are answered from the cache at the cost of a hash; a miss
/// costs one inference (see `benches/pipeline.rs`). The cache is a direct-mapped `Memo` of
/// (key hash, NLL): constant memory (~1 MiB). It belongs to this model and is dropped with it
/// on a model swap.
pub struct Transformer {
    pub model: SequenceModel,
    pub calibration: NllCalibration,
    /// Set when the calibration was made with the floor.
    fresh: Option<FreshStart>,
    /// Set when the calibration was made with the counts' floor (absent in sets trained
    /// before it).
    transitions: Option<Transitions>,
    cache: crate::memo::Memo<(u64, f32)>,
    /// Scores answered from the cache, and by running the model.
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformer")
            .field("model", &self.model)
            .field("calibration", &self.calibration)
            .finish_non_exhaustive()
    }
}

impl Transformer {
    /// Fails only if the model cannot run (to compute the first-request NLLs the calibration
    /// asks for).
    pub fn new(
        model: SequenceModel,
        calibration: NllCalibration,
        transitions: Option<Transitions>,
    ) -> Result<Transformer, TransformerError> {
        let fresh = match calibration.opener_below {
            Some(cut) => Some(FreshStart::of(&model, cut, transitions.as_ref())?),
            None => None,
        };
        Ok(Self::assemble(model, calibration, fresh, transitions))
    }

    /// A transformer whose calibration was made with `fresh`'s floor (and `transitions`'):
    /// training has the first-request NLLs at hand, and need not run the model for them
    /// again.
    pub fn floored(
        model: SequenceModel,
        mut calibration: NllCalibration,
        fresh: FreshStart,
        transitions: Option<Transitions>,
    ) -> Transformer {
        calibration.opener_below = Some(fresh.cut);
        Self::assemble(model, calibration, Some(fresh), transitions)
    }

    fn assemble(
        model: SequenceModel,
        calibration: NllCalibration,
        fresh: Option<FreshStart>,
        transitions: Option<Transitions>,
    ) -> Transformer {
        Transformer {
            model,
            calibration,
            fresh,
            transitions,
            cache: crate::memo::Memo::new(CACHE_SHARDS, CACHE_SLOTS / CACHE_SHARDS),
            hits: Default::default(),
            misses: Default::default(),
        }
    }

    /// Training's transition counts, when the calibration was made with them.
    pub fn transitions(&self) -> Option<&Transitions> {
        self.transitions.as_ref()
    }

    /// The NLL scored for `current`, given `nll`, the model's after a context whose counted
    /// predecessor is `prev` (`counted_from`): at least what training's counts vouch for at
    /// the start of a lane (`Transitions`), then floored for templates that open sessions
    /// (`FreshStart`). Training calibrates on the same.
    pub fn adjust(&self, prev: Option<u32>, current: u32, nll: f32) -> f32 {
        let nll = with_counts(self.transitions.as_ref(), prev, current, nll);
        match &self.fresh {
            Some(f) => f.apply(current, nll),
            None => nll,
        }
    }

    /// Templates of context the model reads (its W).
    pub fn window(&self) -> usize {
        self.model.window()
    }

    /// Requests scored from the cache and by running the model, since load.
    pub fn cache_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// What the model's input is built from: the last W templates (or all of them after BOS
    /// when the whole history fits), and the template to score.
    fn key(
        &self,
        context: &[crate::template::TemplateId],
        session_start: bool,
        current: u32,
    ) -> u64 {
        use std::hash::{Hash, Hasher};
        let w = self.model.window();
        let whole = context.is_empty() || (session_start && context.len() < w);
        let used = if whole {
            context
        } else {
            &context[context.len().saturating_sub(w)..]
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        whole.hash(&mut h);
        used.hash(&mut h);
        current.hash(&mut h);
        h.finish()
    }

    /// Score `current` after `context` (the previous templates of the client's user agent,
    /// most recent last).
    /// `None` if the model failed to run (a detector failure is not a proxy error: the
    /// request is judged by the other detectors).
    pub fn score(
        &self,
        context: &[crate::template::TemplateId],
        session_start: bool,
        current: crate::template::TemplateId,
    ) -> Option<TransformerScore> {
        let key = self.key(context, session_start, current.0);
        let hit = self.cache.find(key, |e| (e.0 == key).then_some(e.1));
        use std::sync::atomic::Ordering::Relaxed;
        let nll = match hit {
            Some(n) => {
                self.hits.fetch_add(1, Relaxed);
                n
            }
            None => {
                self.misses.fetch_add(1, Relaxed);
                // Only a miss needs the ids as the model takes them.
                let ctx: Vec<u32> = context.iter().map(|t| t.0).collect();
                let n = match self.model.nll(&ctx, session_start, current.0) {
                    Ok(n) if n.is_finite() => n,
                    Ok(_) => return None,
                    Err(e) => {
                        tracing::warn!(error = %e, "Transformer inference failed; the request is judged without it.");
                        return None;
                    }
                };
                self.cache.put(key, (key, n));
                n
            }
        };
        let prev = counted_from(context.len(), context.last().map(|t| t.0), session_start);
        let nll = f64::from(self.adjust(prev, current.0, nll));
        Some(TransformerScore {
            nll,
            score: self.calibration.score(nll),
            threshold: self.calibration.threshold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::tensor_proto::DataType;

    fn vi(name: &str, elem: DataType, dims: &[i64]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: elem as i32,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(if d < 0 {
                                    Value::DimParam("batch".into())
                                } else {
                                    Value::DimValue(d)
                                }),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A hand-written model in the shape a foreign exporter produces: no vigil metadata, a
    /// lookup table `table[token]` as logits (a bigram model).
    fn table_model(
        vocab: usize,
        cols: usize,
        w: i64,
        out_dims: &[i64],
        input_type: DataType,
    ) -> Vec<u8> {
        let table: Vec<f32> = (0..vocab * cols)
            .map(|i| ((i * 7919) % 13) as f32 * 0.3)
            .collect();
        let graph = pb::GraphProto {
            node: vec![pb::NodeProto {
                input: vec!["table".into(), "ids".into()],
                output: vec!["logits".into()],
                op_type: "Gather".into(),
                ..Default::default()
            }],
            initializer: vec![pb::TensorProto {
                name: "table".into(),
                dims: vec![vocab as i64, cols as i64],
                data_type: DataType::Float as i32,
                float_data: table,
                ..Default::default()
            }],
            input: vec![vi("ids", input_type, &[-1, w])],
            output: vec![vi("logits", DataType::Float, out_dims)],
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 7,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(graph),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn foreign_model_with_the_contract_loads_and_scores() {
        let bytes = table_model(10, 10, 6, &[-1, 6, 10], DataType::Int64);
        let m = SequenceModel::load(&bytes, Path::new("foreign.onnx")).unwrap();
        assert_eq!((m.window(), m.vocab(), m.n_templates()), (6, 10, 8));
        let short = m.nll(&[1, 2], true, 3).unwrap();
        let long = m.nll(&[1, 2, 3, 4, 5, 6, 7, 1, 2], false, 3).unwrap();
        let unk = m.nll(&[1, 2], true, 5000).unwrap();
        for x in [short, long, unk] {
            assert!(x.is_finite() && x >= 0.0, "{x}");
        }
        // Batch scoring gives the same numbers as one-by-one scoring.
        let ctx: Vec<Vec<u32>> = (0..70)
            .map(|i| (0..(i % 9)).map(|j| (i + j) % 12).collect())
            .collect();
        let items: Vec<(&[u32], bool, u32)> = ctx
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_slice(), i % 2 == 0, (i % 8) as u32))
            .collect();
        let batch = m.nll_batch(&items).unwrap();
        for ((c, s, t), b) in items.iter().zip(&batch) {
            let one = m.nll(c, *s, *t).unwrap();
            assert!((one - b).abs() < 1e-5, "{one} vs {b}");
        }
    }

    #[test]
    fn one_held_out_client_does_not_set_the_threshold() {
        // 10,000 held-out requests from 500 clients, NLLs spread evenly over 0-10 nats: the
        // 0.5% tail starts at 9.95.
        let normal: Vec<(u64, f64)> = (0..10_000u64)
            .map(|i| (i % 500, (i as f64 + 0.5) / 1000.0))
            .collect();
        let plain = NllCalibration::from_client_nlls(normal.clone(), 0.005).unwrap();
        assert!((plain.threshold - 9.95).abs() < 0.01, "{plain:?}");
        // 200 more requests at 14 nats: from 200 clients they are the tail, and the threshold
        // is 14.
        let mut many = normal.clone();
        many.extend((0..200).map(|i| (10_000 + i, 14.0)));
        let many = NllCalibration::from_client_nlls(many, 0.005).unwrap();
        assert_eq!(many.threshold, 14.0);
        // From one client, counted for at most a tenth of the tail, they move it a little.
        let mut odd = normal;
        odd.extend((0..200).map(|_| (9999, 14.0)));
        let capped = NllCalibration::from_client_nlls(odd, 0.005).unwrap();
        assert!(
            capped.threshold > 9.9 && capped.threshold < 10.0,
            "{capped:?}"
        );
    }

    #[test]
    fn id_ranges_parse() {
        assert_eq!(
            parse_id_ranges("1-2, 4", 5).unwrap(),
            [false, true, true, false, true]
        );
        assert_eq!(parse_id_ranges("", 2).unwrap(), [false, false]);
        assert!(parse_id_ranges("3-9", 5).is_err());
        assert!(parse_id_ranges("x", 5).is_err());
        assert!(parse_id_ranges("3-1", 5).is_err());
    }

    #[test]
    fn encode_layout() {
        let bytes = table_model(10, 10, 4, &[-1, 4, 10], DataType::Int64);
        let m = SequenceModel::load(&bytes, Path::new("x.onnx")).unwrap();
        let mut ids = [0i64; 4];
        assert_eq!(m.encode(&[3, 4], true, &mut ids), 2);
        assert_eq!(ids, [BOS, 5, 6, PAD]);
        assert_eq!(m.encode(&[3, 4], false, &mut ids), 1);
        assert_eq!(ids, [5, 6, PAD, PAD]);
        assert_eq!(m.encode(&[], false, &mut ids), 0);
        assert_eq!(ids, [BOS, PAD, PAD, PAD]);
        // Full context: BOS no longer fits, the last W templates are used; 99 is unknown.
        assert_eq!(m.encode(&[1, 2, 3, 4, 99], true, &mut ids), 3);
        assert_eq!(ids, [4, 5, 6, UNK]);
        assert_eq!(m.encode(&[1, 2, 3], true, &mut ids), 3);
        assert_eq!(ids, [BOS, 3, 4, 5]);
    }

    #[test]
    fn corrupt_and_truncated_files_are_refused_with_the_path() {
        let bytes = table_model(10, 10, 6, &[-1, 6, 10], DataType::Int64);
        let path = Path::new("/models/seq.onnx");
        for bad in [
            &bytes[..bytes.len() / 2],
            &b"definitely not protobuf \xff\xff\xff"[..],
            &[][..],
        ] {
            let err = SequenceModel::load(bad, path).unwrap_err();
            assert!(err.to_string().contains("/models/seq.onnx"), "{err}");
        }
        // Every truncation point: a clean error or (for a lucky cut) a valid model, never a panic.
        for cut in (0..bytes.len()).step_by(7) {
            let _ = SequenceModel::load(&bytes[..cut], path);
        }
    }

    #[test]
    fn wrong_shapes_and_types_are_refused() {
        let path = Path::new("bad.onnx");
        let cases = [
            (
                table_model(10, 10, 6, &[-1, 6, 10], DataType::Float),
                "expected int64",
            ),
            (
                table_model(10, 2, 6, &[-1, 6, 2], DataType::Int64),
                "the output shape is",
            ),
        ];
        for (bytes, why) in cases {
            match SequenceModel::load(&bytes, path).unwrap_err() {
                TransformerError::Contract { path, reason } => {
                    assert_eq!(path, Path::new("bad.onnx"));
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("{other}"),
            }
        }
        // Rank-2 output: a 1-D table gathered by [batch, W] ids.
        let mut proto = pb::ModelProto::decode(
            table_model(10, 10, 6, &[-1, 6, 10], DataType::Int64).as_slice(),
        )
        .unwrap();
        if let Some(g) = proto.graph.as_mut() {
            g.initializer[0].dims = vec![100];
        }
        let err = SequenceModel::load(&proto.encode_to_vec(), path).unwrap_err();
        assert!(matches!(err, TransformerError::Contract { .. }), "{err}");
        // Window not fixed.
        let bytes = table_model(10, 10, -1, &[-1, -1, 10], DataType::Int64);
        let err = SequenceModel::load(&bytes, path).unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
    }
}

//! On-disk form of the learned detectors: `vocabulary.json`, `forest_pre.json`,
//! `forest_post.json`, optionally `transformer.onnx` with `transformer.json` (its calibration),
//! and `manifest.json` (format and features versions, creation time, training summary, sha256
//! of every file, canaries). Loading checks every hash, names the file that is missing,
//! truncated, corrupt or from another features version, and replays the canaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::detectors::forest::ForestModel;
use crate::detectors::transformer::{NllCalibration, SequenceModel, Transformer, Transitions};
use crate::features::{FEATURES_VERSION, POST, PRE};
use crate::template::Vocabulary;

/// What the models were trained on, for the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub records: usize,
    pub excluded_by_rules: usize,
    pub clients: usize,
    pub templates: usize,
    pub unknown_share: f64,
    pub first_time: String,
    pub last_time: String,
    pub features_version: u32,
    /// Whether a transformer was trained (a small log may not have enough clients for it).
    #[serde(default)]
    pub transformer: bool,
    /// Post-response records in site-wide waves of authentication failures
    /// (`features::in_failure_wave`), which the post forest is not trained on.
    #[serde(default)]
    pub failure_wave: usize,
    /// Seed of the forests' random choices (`vigil train --seed`; the transformer's is in its
    /// ONNX metadata, `vigil.seed`), to reproduce the set.
    #[serde(default)]
    pub seed: u64,
}

/// The learned detectors of a model set.
#[derive(Debug)]
pub struct Learned {
    pub vocabulary: Vocabulary,
    pub pre: ForestModel<PRE>,
    pub post: ForestModel<POST>,
    pub summary: TrainingSummary,
    /// Names this vocabulary in client sessions, whose template windows hold its ids.
    pub vocabulary_tag: u64,
    /// The sequence model, when the set has one.
    pub transformer: Option<Transformer>,
    /// Its ONNX file, kept to be written out with the set.
    pub transformer_onnx: Option<Vec<u8>>,
}

impl Learned {
    pub fn new(
        vocabulary: Vocabulary,
        pre: ForestModel<PRE>,
        post: ForestModel<POST>,
        summary: TrainingSummary,
    ) -> Learned {
        let tag = serde_json::to_vec(&vocabulary)
            .map(|b| tag_of(&b))
            .unwrap_or(0);
        Learned {
            vocabulary,
            pre,
            post,
            summary,
            vocabulary_tag: tag,
            transformer: None,
            transformer_onnx: None,
        }
    }
}

/// `transformer.json`: what serving needs besides the ONNX graph.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TransformerMeta {
    calibration: NllCalibration,
    /// Training's transition counts (`Transitions`); absent in sets trained before them,
    /// which keep scoring the NLLs they were calibrated on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transitions: Option<Transitions>,
}

/// First 8 bytes of the sha256 of a file: stable across processes, unlike `DefaultHasher`.
fn tag_of(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

pub const FORMAT_VERSION: u32 = 1;
const FILES: [&str; 3] = ["vocabulary.json", "forest_pre.json", "forest_post.json"];
const ONNX: &str = "transformer.onnx";
const TRANSFORMER_META: &str = "transformer.json";

#[derive(Debug, thiserror::Error)]
pub enum LearnedError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: sha256 {actual} does not match the manifest ({expected}): the file is corrupt or from another model set")]
    Hash {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: self-check failed on canary {index} ({line}): {reason}")]
    Canary {
        path: PathBuf,
        index: usize,
        line: String,
        reason: String,
    },
    #[error("{path}: made for features version {found}, this vigil uses {expected}; retrain with `vigil train`")]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub features_version: u32,
    pub created: String,
    pub training: TrainingSummary,
    /// File name -> sha256 (hex).
    pub files: BTreeMap<String, String>,
    /// Training records and what the detectors said about them when the set was written;
    /// loading replays them and refuses a set whose detectors now say something else.
    #[serde(default)]
    pub canaries: Vec<Canary>,
}

/// A record and the detectors' outputs on it, replayed in order through fresh sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// The record as a combined-format line.
    pub line: String,
    pub template: String,
    pub forest_pre: f64,
    pub forest_post: f64,
    /// The transformer's NLL (absent in sets without one).
    #[serde(default)]
    pub nll: Option<f64>,
}

/// How many training records become canaries.
pub const CANARIES: usize = 24;

/// Replay records through fresh sessions and the learned detectors, as the proxy would.
pub fn canary_outputs(learned: &Learned, records: &[crate::record::Record]) -> Vec<Canary> {
    use crate::session::{SessionConfig, Sessions};
    let sessions = Sessions::new(SessionConfig::default());
    records
        .iter()
        .map(|r| {
            let (_, template, a, post) =
                crate::pipeline::replay((&learned.vocabulary, 0), &sessions, &r.client, r);
            let nll = learned.transformer.as_ref().and_then(|t| {
                let ctx: Vec<u32> = a.context.iter().map(|t| t.0).collect();
                t.model
                    .nll(&ctx, a.whole_history, template.0)
                    .ok()
                    .map(f64::from)
            });
            Canary {
                line: r.to_combined(),
                template: learned.vocabulary.text(template).to_string(),
                forest_pre: learned.pre.score(&a.features).raw,
                forest_post: learned.post.score(&post).raw,
                nll,
            }
        })
        .collect()
}

/// Check a loaded set against its manifest's canaries.
fn self_check(learned: &Learned, manifest: &Manifest, path: &Path) -> Result<(), LearnedError> {
    let mut records = Vec::with_capacity(manifest.canaries.len());
    for (index, c) in manifest.canaries.iter().enumerate() {
        let r = crate::record::Record::parse_line(&c.line, index + 1).map_err(|e| {
            LearnedError::Canary {
                path: path.to_path_buf(),
                index,
                line: c.line.clone(),
                reason: format!("the stored record does not parse: {}", e.reason),
            }
        })?;
        records.push(r);
    }
    let now = canary_outputs(learned, &records);
    for (index, (want, got)) in manifest.canaries.iter().zip(&now).enumerate() {
        let fail = |reason: String| LearnedError::Canary {
            path: path.to_path_buf(),
            index,
            line: want.line.clone(),
            reason,
        };
        if want.template != got.template {
            return Err(fail(format!(
                "template {:?}, recorded {:?}",
                got.template, want.template
            )));
        }
        for (name, w, g) in [
            ("forest_pre", want.forest_pre, got.forest_pre),
            ("forest_post", want.forest_post, got.forest_post),
        ] {
            // Forests score in float32 (~1e-8 from the float64 form, so model sets recorded
            // before that still load); another forest is off by far more.
            if !(g.is_finite() && (0.0..=1.0).contains(&g)) || (w - g).abs() > 1e-6 {
                return Err(fail(format!("{name} score {g}, recorded {w}")));
            }
        }
        match (want.nll, got.nll) {
            (None, None) => {}
            // Inference is float32 and may use other kernels on another CPU: a small
            // tolerance, far below any difference a foreign or damaged model makes.
            (Some(w), Some(g))
                if g.is_finite() && g >= 0.0 && (w - g).abs() <= 1e-3 * (1.0 + w.abs()) => {}
            (w, g) => return Err(fail(format!("transformer NLL {g:?}, recorded {w:?}"))),
        }
    }
    Ok(())
}

impl Manifest {
    /// A short name for this model set: the start of the hash of its files' hashes.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        for (name, sum) in &self.files {
            h.update(name.as_bytes());
            h.update(sum.as_bytes());
        }
        h.finalize()
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Whether `dir` holds a model set (its manifest), damaged or not.
pub fn present(dir: &Path) -> bool {
    dir.join("manifest.json").exists()
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_err(path: &Path, reason: impl ToString) -> LearnedError {
    LearnedError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Write the learned detectors into `dir` (created if needed). The manifest is written last,
/// so a crash mid-way leaves a set that refuses to load rather than a mixed one.
pub fn save(
    learned: &Learned,
    canaries: Vec<Canary>,
    dir: &Path,
) -> Result<Manifest, LearnedError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let bodies = [
        serde_json::to_vec(&learned.vocabulary),
        serde_json::to_vec(&learned.pre),
        serde_json::to_vec(&learned.post),
    ];
    let mut files = BTreeMap::new();
    let mut write = |name: &str, body: &[u8]| -> Result<(), LearnedError> {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|e| file_err(&path, e))?;
        files.insert(name.to_string(), sha256_hex(body));
        Ok(())
    };
    for (name, body) in FILES.iter().zip(bodies) {
        let body = body.map_err(|e| file_err(&dir.join(name), e))?;
        write(name, &body)?;
    }
    // A set without a transformer must not leave an older set's transformer beside it.
    for stale in [ONNX, TRANSFORMER_META] {
        let p = dir.join(stale);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| file_err(&p, e))?;
        }
    }
    if let (Some(t), Some(onnx)) = (&learned.transformer, &learned.transformer_onnx) {
        write(ONNX, onnx)?;
        let meta = serde_json::to_vec_pretty(&TransformerMeta {
            calibration: t.calibration,
            transitions: t.transitions().cloned(),
        })
        .map_err(|e| file_err(&dir.join(TRANSFORMER_META), e))?;
        write(TRANSFORMER_META, &meta)?;
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        features_version: FEATURES_VERSION,
        created: chrono::Utc::now().to_rfc3339(),
        training: learned.summary.clone(),
        files,
        canaries,
    };
    let path = dir.join("manifest.json");
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| file_err(&path, e))?;
    std::fs::write(&path, body).map_err(|e| file_err(&path, e))?;
    Ok(manifest)
}

/// Load and verify the learned detectors in `dir`.
pub fn load(dir: &Path) -> Result<(Learned, Manifest), LearnedError> {
    let mpath = dir.join("manifest.json");
    let mbytes = std::fs::read(&mpath).map_err(|e| file_err(&mpath, e))?;
    let manifest: Manifest = serde_json::from_slice(&mbytes)
        .map_err(|e| file_err(&mpath, format!("not a model manifest: {e}")))?;
    if manifest.features_version != FEATURES_VERSION {
        return Err(LearnedError::Version {
            path: mpath,
            found: manifest.features_version,
            expected: FEATURES_VERSION,
        });
    }
    let read = |name: &str| -> Result<Vec<u8>, LearnedError> {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| file_err(&path, e))?;
        let expected = manifest
            .files
            .get(name)
            .ok_or_else(|| file_err(&mpath, format!("lists no hash for {name}")))?;
        let actual = sha256_hex(&bytes);
        if &actual != expected {
            return Err(LearnedError::Hash {
                path,
                expected: expected.clone(),
                actual,
            });
        }
        Ok(bytes)
    };
    let parse_err = |name: &str, e: serde_json::Error| {
        file_err(&dir.join(name), format!("cannot be read: {e}"))
    };
    let mut vocabulary: crate::template::Vocabulary =
        serde_json::from_slice(&read(FILES[0])?).map_err(|e| parse_err(FILES[0], e))?;
    vocabulary.index();
    let pre = serde_json::from_slice(&read(FILES[1])?).map_err(|e| parse_err(FILES[1], e))?;
    let post = serde_json::from_slice(&read(FILES[2])?).map_err(|e| parse_err(FILES[2], e))?;
    let mut learned = Learned::new(vocabulary, pre, post, manifest.training.clone());
    if manifest.files.contains_key(ONNX) {
        let onnx = read(ONNX)?;
        let meta: TransformerMeta = serde_json::from_slice(&read(TRANSFORMER_META)?)
            .map_err(|e| parse_err(TRANSFORMER_META, e))?;
        if !meta.calibration.valid() {
            return Err(file_err(
                &dir.join(TRANSFORMER_META),
                "calibration out of range",
            ));
        }
        let model = SequenceModel::load(&onnx, &dir.join(ONNX))
            .map_err(|e| file_err(&dir.join(ONNX), e))?;
        if model.n_templates() < learned.vocabulary.len() {
            return Err(file_err(
                &dir.join(ONNX),
                format!(
                    "knows {} templates but the vocabulary has {}: it belongs to another model set",
                    model.n_templates(),
                    learned.vocabulary.len()
                ),
            ));
        }
        if let Some(max) = meta.transitions.as_ref().and_then(|t| t.max_template()) {
            if max as usize >= learned.vocabulary.len() {
                return Err(file_err(
                    &dir.join(TRANSFORMER_META),
                    format!(
                        "transitions count template {max}, but the vocabulary has {}",
                        learned.vocabulary.len()
                    ),
                ));
            }
        }
        learned.transformer = Some(
            Transformer::new(model, meta.calibration, meta.transitions)
                .map_err(|e| file_err(&dir.join(ONNX), e))?,
        );
        learned.transformer_onnx = Some(onnx);
    }
    self_check(&learned, &manifest, &mpath)?;
    Ok((learned, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Inspection, OverLimit};
    use crate::detectors::rules::RuleSet;
    use crate::record::Record;

    fn learned() -> crate::learn::Trained {
        learned_with_seed(crate::detectors::forest::TrainOptions::default().seed)
    }

    fn learned_with_seed(seed: u64) -> crate::learn::Trained {
        let rules =
            RuleSet::load(&[PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))]).unwrap();
        let limits = Inspection {
            body_limit: 65536,
            over_limit: OverLimit::InspectPrefix,
            max_request_line: 8192,
            max_header_value: 8192,
            max_args: 255,
        };
        let recs: Vec<Record> = (0..600u32)
            .map(|i| {
                let l = format!(
                    "10.0.0.{} - - [01/Mar/2024:{:02}:{:02}:{:02} +0000] \"GET /page/{} HTTP/1.1\" 200 100 \"-\" \"ua\"",
                    i % 9,
                    i * 60 / 3600,
                    i * 60 / 60 % 60,
                    i % 60,
                    i % 5
                );
                Record::parse_line(&l, 1).unwrap()
            })
            .collect();
        let mut cfg = crate::learn::TrainConfig::default();
        cfg.forest.seed = seed;
        crate::learn::train(&recs, &rules, &limits, &cfg, |_, _, _| {}).unwrap()
    }

    #[test]
    fn a_file_from_another_set_with_a_matching_hash_fails_the_canaries() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let t = learned();
        save(&t.learned, t.canaries.clone(), a.path()).unwrap();
        // Another training run with another seed: its forests, and so its scores, differ.
        let u = learned_with_seed(7);
        save(&u.learned, u.canaries.clone(), b.path()).unwrap();
        let foreign = std::fs::read(b.path().join("forest_post.json")).unwrap();
        std::fs::write(a.path().join("forest_post.json"), &foreign).unwrap();
        let mpath = a.path().join("manifest.json");
        let mut m: Manifest = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        m.files
            .insert("forest_post.json".into(), sha256_hex(&foreign));
        std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
        let err = load(a.path()).unwrap_err().to_string();
        assert!(
            err.contains("manifest.json") && err.contains("canary") && err.contains("forest_post"),
            "{err}"
        );
    }

    #[test]
    fn round_trips_and_refuses_tampering_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = learned();
        let l = &t.learned;
        save(l, t.canaries.clone(), dir.path()).unwrap();
        let (back, manifest) = load(dir.path()).unwrap();
        assert_eq!(manifest.features_version, FEATURES_VERSION);
        let v = [0.5; crate::features::POST];
        assert_eq!(back.post.score(&v), l.post.score(&v));
        assert_eq!(back.vocabulary, l.vocabulary);

        // Truncate one file: refused, with its path.
        let f = dir.path().join("forest_pre.json");
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("forest_pre.json") && err.contains("sha256"),
            "{err}"
        );

        // A missing manifest is named too.
        std::fs::remove_file(dir.path().join("manifest.json")).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifest.json"), "{err}");
    }

    #[test]
    fn transition_counts_round_trip_and_damaged_ones_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = learned();
        let counts = t.learned.transformer.as_ref().and_then(|m| m.transitions());
        assert!(counts.is_some_and(|c| c.max_template().is_some()));
        save(&t.learned, t.canaries.clone(), dir.path()).unwrap();
        let (back, _) = load(dir.path()).unwrap();
        assert_eq!(
            back.transformer.as_ref().and_then(|m| m.transitions()),
            counts
        );

        let meta_path = dir.path().join(TRANSFORMER_META);
        let meta = std::fs::read_to_string(&meta_path).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&meta).unwrap();
        let beyond = back.vocabulary.len() as u64;
        for (edit, reason) in [
            (serde_json::json!([[1, 0]]), "counted 0 times"),
            (serde_json::json!([[beyond, 4]]), "but the vocabulary has"),
        ] {
            json["transitions"]["start"] = edit;
            let body = serde_json::to_vec(&json).unwrap();
            std::fs::write(&meta_path, &body).unwrap();
            let mpath = dir.path().join("manifest.json");
            let mut m: Manifest = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
            m.files.insert(TRANSFORMER_META.into(), sha256_hex(&body));
            std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
            let err = load(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains("transformer.json") && err.contains(reason),
                "{err}"
            );
        }
    }
}

//! The trainer: frozen base models, LoRA adapters, evaluation and the attribution unit of work.
//! The only module that touches tch (libtorch).
//!
//! # Bird's-eye view
//!
//! - **Bases** ([`model`]): a base is a folder in Hugging Face layout — `config.json`, one or more
//!   `*.safetensors` (memory-mapped through libtorch, zero-copy for float32 on CPU) and, for text
//!   models, `tokenizer.json`. Two families: `llama` ([`llama`]: RMSNorm, RoPE, SwiGLU,
//!   grouped-query attention, tied or untied embeddings; real Llama-architecture checkpoints load
//!   unchanged) and `mlp` ([`mlp`]: a tabular classifier with standardization statistics stored as
//!   tensors). A config key `"datanet_tokenizer": "bytes"` selects the built-in byte tokenizer
//!   ([`tokenizer`]) instead of `tokenizer.json`. [`init`] writes random presets (`tiny`, `bench`)
//!   and pretrains a base from scratch. [`provision`] is the one way every caller gets a manifest's
//!   base folder (generated once, or imported and re-hashed before use).
//! - **LoRA** ([`lora`]): A and B matrices around the recipe's target linear layers; the base stays
//!   frozen. Adapters are written in PEFT layout (`adapter_config.json` + `adapter_model.safetensors`
//!   with PEFT tensor names) and can be merged into the base (`W + alpha/r · B·A`).
//! - **Training** ([`train`]): records (canonical JSON) become token or feature batches
//!   ([`data`]); AdamW with linear warm-up, gradient clipping and accumulation; loss on completion
//!   tokens only for `instruct`. Seeded: the recipe seed fixes LoRA init, data order and dropout,
//!   so the same seed, device and thread count give identical adapter bytes on CPU.
//! - **Evaluation** ([`eval`]): loss and accuracy per evaluation slice, combined with the manifest's
//!   slice weights.
//! - **Attribution's unit of work** ([`utility`]): [`utility::UtilityJob`] loads the base and the
//!   evaluation set once, then trains a short fixed-recipe LoRA on any subset of records and
//!   returns the weighted evaluation improvement over the base in micro-units.
//! - **Lineage** ([`lineage`]): the signed record of what an adapter was trained on (Merkle root of
//!   the training records in training order) and inclusion proofs against it. Pure codec, no tch.
//!
//! Callers: the CLI (`datanet model|train|adapter|eval|lineage`), the attribution engine (through
//! `utility`) and the benchmarks. Nothing here touches the network or the store; the CLI moves
//! bytes between the store and the trainer.
//!
//! libtorch's random generator and thread pool are process-wide, so every training run holds
//! [`TorchSession`] (a process-wide lock that also sets the seed and thread count).

pub mod bench;
pub mod data;
pub mod eval;
pub mod init;
pub mod lineage;
pub mod llama;
pub mod lora;
pub mod mlp;
pub mod model;
pub mod optim;
pub mod provision;
pub mod tokenizer;
pub mod train;
pub mod utility;
pub mod weights;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

pub use model::{Base, Family};
pub use provision::provision_base;

/// Everything that can go wrong while loading, training, evaluating or merging.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: missing; a base model folder needs config.json (Hugging Face layout)")]
    MissingConfig { path: PathBuf },
    #[error("{path}: malformed config: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: key `{key}`: {reason}")]
    ConfigKey { path: PathBuf, key: String, reason: String },
    #[error("{path}: no *.safetensors files in the model folder")]
    NoWeights { path: PathBuf },
    #[error("{path}: malformed safetensors: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: tensor `{tensor}` missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    TensorShape { path: PathBuf, tensor: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("{path}: tensor `{tensor}` has unsupported dtype {dtype}")]
    TensorDtype { path: PathBuf, tensor: String, dtype: String },
    #[error("{path}: tokenizer does not parse: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("unknown target module `{name}` for the {family} family; known: {known}")]
    UnknownTargetModule { name: String, family: &'static str, known: String },
    #[error("recipe lora_rank {rank} is invalid for `{module}` (must be 1..={max})")]
    BadRank { rank: u32, module: String, max: i64 },
    #[error("recipe: {0}")]
    Recipe(String),
    #[error("empty training set: no records to train on")]
    EmptyTrainingSet,
    #[error("empty evaluation set: no records with a `slice` field")]
    EmptyEvalSet,
    #[error("record {index}: {reason}")]
    Record { index: usize, reason: String },
    #[error("training diverged: evaluation loss {after} after training (base {before}); the job has no utility")]
    Diverged { before: f64, after: f64 },
    #[error("--device cuda: CUDA is not available (libtorch sees no GPU); use --device cpu")]
    CudaUnavailable,
    #[error("unknown device `{0}`; use auto, cpu, cuda or cuda:N")]
    BadDevice(String),
    #[error("{path}: bad adapter: {reason}")]
    Adapter { path: PathBuf, reason: String },
    #[error("task {task} does not fit the {family} family")]
    TaskMismatch { task: &'static str, family: &'static str },
    #[error("base model {hash} is not installed; `datanet model import <folder>` it (or pass --base)")]
    BaseNotInstalled { hash: crate::ids::BlobHash },
    #[error(
        "{path}: the base model folder hashes to {found}, but the manifest names {expected}: it was modified or \
         damaged after import; import the original again (`datanet model import <folder>`)"
    )]
    BaseHashMismatch { path: PathBuf, expected: crate::ids::BlobHash, found: crate::ids::BlobHash },
    #[error(
        "importing {src}: the copy hashes to {found}, the source to {expected}; nothing was installed \
         (was the folder changing during the import?)"
    )]
    ImportMismatch { src: PathBuf, expected: crate::ids::BlobHash, found: crate::ids::BlobHash },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Shorthand used across the trainer.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}

/// Where training runs: `auto` (CUDA when libtorch sees a GPU, else CPU), `cpu`, `cuda`, `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| TrainError::BadDevice(s.to_string())),
        }
    }
}

impl DeviceChoice {
    /// The libtorch device; an explicit `cuda` without a GPU is an error, never a silent fallback.
    pub fn resolve(self) -> Result<tch::Device> {
        match self {
            DeviceChoice::Auto => Ok(tch::Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Cuda(n) => {
                if tch::Cuda::is_available() && (n as i64) < tch::Cuda::device_count() {
                    Ok(tch::Device::Cuda(n))
                } else {
                    Err(TrainError::CudaUnavailable)
                }
            }
        }
    }
}

static TORCH_LOCK: Mutex<()> = Mutex::new(());

/// Exclusive use of libtorch's process-wide state (random generator, CPU thread pool) for one
/// training or evaluation run. Holding it makes runs in the same process reproducible even when
/// callers use several threads.
pub struct TorchSession {
    _guard: MutexGuard<'static, ()>,
}

impl TorchSession {
    /// Takes the lock, seeds libtorch's generators and sets the CPU thread count (0 = leave as is).
    pub fn begin(seed: u64, threads: usize) -> Self {
        let guard = TORCH_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if threads > 0 {
            tch::set_num_threads(threads as i32);
        }
        tch::manual_seed(seed as i64);
        TorchSession { _guard: guard }
    }
}

#[cfg(test)]
mod tests;

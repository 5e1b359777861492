//! Text to token ids: `tokenizer.json` through the `tokenizers` crate, or the built-in byte
//! tokenizer when `config.json` has `"datanet_tokenizer": "bytes"` (ids 0..=255 are the UTF-8
//! bytes; `bos_token_id` / `eos_token_id` default to 256 / 257; `vocab_size` must cover them).
//!
//! Special tokens are added by the trainer, never by the tokenizer, so prompt and completion can be
//! encoded separately and joined without a stray BOS in the middle.

use super::model::ConfigJson;
use super::{Result, TrainError};
use std::path::Path;

/// A loaded tokenizer with its BOS and EOS ids.
pub enum Tokenizer {
    Bytes { bos: i64, eos: i64 },
    Hf { tokenizer: Box<tokenizers::Tokenizer>, bos: Option<i64>, eos: Option<i64> },
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokenizer::Bytes { bos, eos } => write!(f, "Tokenizer::Bytes(bos {bos}, eos {eos})"),
            Tokenizer::Hf { bos, eos, .. } => write!(f, "Tokenizer::Hf(bos {bos:?}, eos {eos:?})"),
        }
    }
}

impl Tokenizer {
    /// The tokenizer a model folder asks for.
    pub fn load(dir: &Path, cfg: &ConfigJson, vocab_size: i64) -> Result<Self> {
        let bos = cfg.token_id("bos_token_id")?;
        let eos = cfg.token_id("eos_token_id")?;
        for (key, id) in [("bos_token_id", bos), ("eos_token_id", eos)] {
            if let Some(id) = id
                && !(0..vocab_size).contains(&id)
            {
                return Err(cfg.key_err(key, format!("token id {id} outside the vocabulary of {vocab_size}")));
            }
        }
        match cfg.str_opt("datanet_tokenizer")? {
            Some("bytes") => {
                let (bos, eos) = (bos.unwrap_or(256), eos.unwrap_or(257));
                if vocab_size < 258 {
                    return Err(
                        cfg.key_err("vocab_size", "the byte tokenizer needs at least 258 (256 bytes, BOS, EOS)")
                    );
                }
                Ok(Tokenizer::Bytes { bos, eos })
            }
            Some(other) => {
                Err(cfg.key_err("datanet_tokenizer", format!("unknown `{other}`; the only value is `bytes`")))
            }
            None => {
                let path = dir.join("tokenizer.json");
                let bytes = std::fs::read(&path).map_err(|e| TrainError::Tokenizer {
                    path: path.clone(),
                    reason: format!("{e} (or set \"datanet_tokenizer\": \"bytes\" in config.json)"),
                })?;
                let tokenizer = tokenizers::Tokenizer::from_bytes(&bytes)
                    .map_err(|e| TrainError::Tokenizer { path: path.clone(), reason: e.to_string() })?;
                let n = tokenizer.get_vocab_size(true) as i64;
                if n > vocab_size {
                    return Err(TrainError::Tokenizer {
                        path,
                        reason: format!("{n} tokens do not fit the model's vocab_size {vocab_size}"),
                    });
                }
                Ok(Tokenizer::Hf { tokenizer: Box::new(tokenizer), bos, eos })
            }
        }
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        match self {
            Tokenizer::Bytes { .. } => Ok(text.bytes().map(i64::from).collect()),
            Tokenizer::Hf { tokenizer, .. } => tokenizer
                .encode_fast(text, false)
                .map(|e| e.get_ids().iter().map(|&i| i64::from(i)).collect())
                .map_err(|e| format!("tokenizer: {e}")),
        }
    }

    /// The beginning-of-sequence id, if the model has one.
    pub fn bos(&self) -> Option<i64> {
        match self {
            Tokenizer::Bytes { bos, .. } => Some(*bos),
            Tokenizer::Hf { bos, .. } => *bos,
        }
    }

    /// The end-of-sequence id, if the model has one.
    pub fn eos(&self) -> Option<i64> {
        match self {
            Tokenizer::Bytes { eos, .. } => Some(*eos),
            Tokenizer::Hf { eos, .. } => *eos,
        }
    }
}

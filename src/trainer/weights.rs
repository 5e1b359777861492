//! Reading and writing named tensors in the safetensors format.
//!
//! Reading memory-maps each file through libtorch (`from_file`, a private read-only mapping), so a
//! float32 checkpoint on CPU costs no copy; other dtypes are converted to float32. Headers are
//! checked before any tensor is touched: every offset inside the file, every byte count equal to
//! shape × dtype size. Writing produces the standard layout with `{"format": "pt"}` metadata, which
//! `transformers` and `peft` expect; tensor order in the file is fixed by the format (sorted), so
//! the same tensors always give the same bytes.

use super::{Result, TrainError, io_err};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Largest safetensors header accepted (the JSON index at the start of the file).
pub const HEADER_BYTES_MAX: u64 = 100 * 1024 * 1024;

/// Named float32 tensors loaded from one or more files, remembering which file each came from.
pub struct TensorSet {
    /// The folder (or file) the tensors came from, for error messages.
    pub origin: PathBuf,
    tensors: BTreeMap<String, (Tensor, PathBuf)>,
}

impl TensorSet {
    /// An empty set (for tensors built in memory).
    pub fn empty(origin: impl Into<PathBuf>) -> Self {
        TensorSet { origin: origin.into(), tensors: BTreeMap::new() }
    }

    /// Loads every `*.safetensors` file in `dir` (sorted by name) onto `device`.
    pub fn load_dir(dir: &Path, device: Device) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(TrainError::NoWeights { path: dir.to_path_buf() });
        }
        let mut set = TensorSet::empty(dir);
        for f in files {
            for (name, t) in read_file(&f, device)? {
                set.tensors.insert(name, (t, f.clone()));
            }
        }
        Ok(set)
    }

    /// Loads one safetensors file.
    pub fn load_file(path: &Path, device: Device) -> Result<Self> {
        let mut set = TensorSet::empty(path);
        for (name, t) in read_file(path, device)? {
            set.tensors.insert(name, (t, path.to_path_buf()));
        }
        Ok(set)
    }

    /// Adds a tensor built in memory.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        let origin = self.origin.clone();
        self.tensors.insert(name.into(), (t, origin));
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// Takes tensor `name`, checking its shape; errors name the file and the tensor.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let (t, path) = self
            .tensors
            .remove(name)
            .ok_or_else(|| TrainError::MissingTensor { path: self.origin.clone(), tensor: name.to_string() })?;
        if t.size() != shape {
            return Err(TrainError::TensorShape {
                path,
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: t.size(),
            });
        }
        Ok(t)
    }

    /// Takes tensor `name` when present (shape checked), `None` when absent.
    pub fn take_opt(&mut self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        if self.contains(name) { self.take(name, shape).map(Some) } else { Ok(None) }
    }
}

fn kind_of(dtype: safetensors::Dtype) -> Option<Kind> {
    Some(match dtype {
        safetensors::Dtype::F32 => Kind::Float,
        safetensors::Dtype::F16 => Kind::Half,
        safetensors::Dtype::BF16 => Kind::BFloat16,
        safetensors::Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// Reads one safetensors file: header checks first, then a memory-mapped view per tensor.
///
/// The header is parsed and validated by the `safetensors` crate (contiguous offsets, each byte
/// count equal to shape × dtype size); this function adds the bounds against the file itself.
pub fn read_file(path: &Path, device: Device) -> Result<Vec<(String, Tensor)>> {
    use std::io::Read;
    let bad = |reason: String| TrainError::Safetensors { path: path.to_path_buf(), reason };
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8).map_err(|_| bad(format!("file of {file_len} bytes is too short for a header")))?;
    let header_len = u64::from_le_bytes(len8);
    if header_len > HEADER_BYTES_MAX || 8 + header_len > file_len {
        return Err(bad(format!("header length {header_len} does not fit a file of {file_len} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(io_err(path))?;
    let meta: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("bad header: {e}")))?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    if meta.data_len() as u64 > data_len {
        return Err(bad(format!(
            "the header's tensors need {} data bytes; the file holds {data_len}",
            meta.data_len()
        )));
    }
    let mut entries = Vec::new();
    for name in meta.offset_keys() {
        let info = meta.info(&name).expect("offset_keys names tensors of the header");
        let Some(kind) = kind_of(info.dtype) else {
            return Err(TrainError::TensorDtype {
                path: path.to_path_buf(),
                tensor: name,
                dtype: format!("{:?}", info.dtype),
            });
        };
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let (start, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        entries.push((name, kind, shape, start, end));
    }
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let path_str = path.to_str().ok_or_else(|| bad("path is not UTF-8".into()))?;
    let all = Tensor::f_from_file(path_str, false, Some(file_len as i64), (Kind::Uint8, Device::Cpu))?;
    let mut out = Vec::with_capacity(entries.len());
    for (name, kind, shape, start, end) in entries {
        let bytes = all.f_narrow(0, (data_start + start) as i64, (end - start) as i64)?;
        let elt = kind.elt_size_in_bytes() as u64;
        // A view needs the element aligned inside the mapping; otherwise copy to aligned memory.
        let bytes = if (data_start + start) % elt == 0 { bytes } else { bytes.copy() };
        let t = bytes.f_view_dtype(kind)?.f_reshape(&shape)?;
        let t = if kind == Kind::Float { t } else { t.f_to_kind(Kind::Float)? };
        let t = if device == Device::Cpu { t } else { t.f_to_device(device)? };
        out.push((name, t));
    }
    Ok(out)
}

/// The little-endian float32 bytes of a tensor (moved to CPU, made contiguous).
pub fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
    let n = t.numel();
    let mut v = vec![0u8; n * 4];
    t.f_copy_data_u8(&mut v, n)?;
    Ok(v)
}

struct OwnedView {
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for OwnedView {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Serializes named tensors as float32 safetensors bytes with `{"format": "pt"}` metadata.
pub fn to_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let shape = t.size().iter().map(|&d| d as usize).collect();
        views.push((name.clone(), OwnedView { shape, data: f32_bytes(t)? }));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta))
        .map_err(|e| TrainError::Safetensors { path: PathBuf::from("<memory>"), reason: e.to_string() })
}

/// Writes named tensors to `path` as float32 safetensors.
pub fn write(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    std::fs::write(path, to_bytes(tensors)?).map_err(io_err(path))
}

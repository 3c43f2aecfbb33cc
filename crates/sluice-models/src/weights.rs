//! Checkpoint readers behind candle's `VarBuilder`.
//!
//! candle's own mmap reader copies each tensor out of the map but keeps the map's pages resident,
//! so loading a 2 GB checkpoint peaks near 4 GB. This reader maps the same files, copies a tensor
//! when a layer asks for it, then tells the kernel the mapped pages are no longer needed, which
//! keeps peak RSS near the size of the weights. `pytorch_model.bin` goes through candle's pickle
//! reader (no mmap possible for zip-pickled tensors).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::error::{ModelError, Result};

struct TensorEntry {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// Memory-mapped safetensors files whose pages are released once each tensor is copied.
pub struct MmapSafetensors {
    maps: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, TensorEntry>,
}

impl MmapSafetensors {
    /// Maps the files and reads their headers (no tensor data is touched yet).
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut maps = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (file, path) in paths.iter().enumerate() {
            let f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the map is read-only; a checkpoint rewritten while it is being loaded is the
            // same hazard as with candle's and transformers' own mmap loaders.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| ModelError::io(path, e))?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| ModelError::InvalidFile {
                    path: path.clone(),
                    reason: format!("not a safetensors file: {e}"),
                })?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                entries.insert(
                    name,
                    TensorEntry {
                        file,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: base + info.data_offsets.0,
                        end: base + info.data_offsets.1,
                    },
                );
            }
            maps.push((path.clone(), map));
        }
        Ok(Self { maps, entries })
    }

    fn load(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let e = self.entries.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_owned(),
            }
            .bt()
        })?;
        let (path, map) = &self.maps[e.file];
        let bytes = map.get(e.start..e.end).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: tensor {name} lies past the end",
                path.display()
            ))
        })?;
        let view = safetensors::tensor::TensorView::new(e.dtype, e.shape.clone(), bytes)
            .map_err(|err| candle_core::Error::Msg(format!("{}: {name}: {err}", path.display())))?;
        let t = view.load(dev)?;
        release_pages(map, e.start, e.end);
        Ok(t)
    }
}

/// Drops the pages of `[start, end)` from this process's resident set (they stay in the page cache).
fn release_pages(map: &Mmap, start: usize, end: usize) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let first = start.div_ceil(PAGE) * PAGE;
        let last = (end / PAGE) * PAGE;
        if last > first {
            // SAFETY: the map is private and read-only and no slice of it outlives `load`, so
            // dropping its pages only makes a later read fault them in again from the file.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
            };
        }
    }
    #[cfg(not(unix))]
    let _ = (map, start, end);
}

impl SimpleBackend for MmapSafetensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.load(name, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: s,
                rhs: t.shape().clone(),
                op: "load weight",
            }
            .bt());
        }
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// Weight files found in a model directory, in the order transformers prefers them.
pub fn weight_files(dir: &Path) -> Result<WeightFiles> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(WeightFiles::Safetensors(vec![single]));
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::InvalidFile {
                path: index.clone(),
                reason: e.to_string(),
            })?;
        let mut files: Vec<String> = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.values()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.dedup();
        if files.is_empty() {
            return Err(ModelError::InvalidFile {
                path: index,
                reason: "weight_map lists no files".into(),
            });
        }
        return Ok(WeightFiles::Safetensors(
            files.into_iter().map(|f| dir.join(f)).collect(),
        ));
    }
    let bin = dir.join("pytorch_model.bin");
    if bin.is_file() {
        return Ok(WeightFiles::Pytorch(bin));
    }
    Err(ModelError::MissingFile {
        dir: dir.to_owned(),
        file: "model.safetensors".into(),
        hint: "expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"
            .into(),
    })
}

/// The kind of checkpoint in a directory.
#[derive(Debug, Clone)]
pub enum WeightFiles {
    /// One or more safetensors files (memory-mapped).
    Safetensors(Vec<PathBuf>),
    /// A PyTorch pickle checkpoint.
    Pytorch(PathBuf),
}

impl WeightFiles {
    /// A `VarBuilder` over these files, converting weights to `dtype` on `dev`.
    pub fn var_builder(&self, dtype: DType, dev: &Device) -> Result<VarBuilder<'static>> {
        match self {
            WeightFiles::Safetensors(paths) => Ok(VarBuilder::from_backend(
                Box::new(MmapSafetensors::open(paths)?),
                dtype,
                dev.clone(),
            )),
            WeightFiles::Pytorch(path) => {
                VarBuilder::from_pth(path, dtype, dev).map_err(|e| ModelError::InvalidFile {
                    path: path.clone(),
                    reason: format!("not a readable PyTorch checkpoint: {e}"),
                })
            }
        }
    }
}

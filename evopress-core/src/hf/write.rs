//! Writing an HF directory (`config.json` + `model.safetensors`) that transformers loads:
//! what `evopress convert` and the exporters produce.

use super::shapes::expected_tensors;
use super::{CONFIG, SINGLE};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::fsutil::{write_atomically, write_atomically_with};
use evopress_kernels::{DType, Weight, WeightView};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Writes `config.json` and a single `model.safetensors` holding `tensors` (HF names, each
/// exactly once) stored as `dtype`, creating `dir` if needed. The tensors must be exactly
/// those the architecture needs ([`expected_tensors`]); a missing, extra or mis-sized tensor
/// is an error, because transformers would otherwise initialise it randomly or drop it with
/// only a warning. Shapes on disk come from the config, so 1-D tensors (`rows == 1`) are
/// written 1-D.
///
/// Each file is written under a temporary name, synced and renamed into place, so a killed
/// run leaves either the old file or the new one. Weights are converted to `dtype` one tensor
/// at a time while writing; no second copy of the model is built.
pub fn write_hf_dir(
    dir: impl AsRef<Path>,
    cfg: &ModelConfig,
    tensors: impl IntoIterator<Item = (String, Weight)>,
    dtype: DType,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let weights_path = dir.join(SINGLE);
    let views = tensor_views(&weights_path, cfg, tensors, dtype)?;

    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    write_atomically_with(&weights_path, |tmp| {
        safetensors::serialize_to_file(views, &metadata, tmp)
            .map_err(|e| Error::format(tmp, format!("writing safetensors: {e}")))
    })?;

    let mut config = cfg.to_hf_json();
    config["torch_dtype"] = torch_dtype(dtype).into();
    let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
    write_atomically(&dir.join(CONFIG), (text + "\n").as_bytes())
}

/// Pairs each tensor with its HF shape from the config, checking names and sizes, and that
/// nothing the architecture needs is missing.
fn tensor_views(
    path: &Path,
    cfg: &ModelConfig,
    tensors: impl IntoIterator<Item = (String, Weight)>,
    dtype: DType,
) -> Result<BTreeMap<String, TensorOut>> {
    let mut shapes: HashMap<String, Vec<usize>> = expected_tensors(cfg).into_iter().collect();
    let mut views = BTreeMap::new();
    for (name, weight) in tensors {
        let Some(shape) = shapes.remove(&name) else {
            let what = if views.contains_key(&name) {
                "given twice"
            } else {
                "not part of the architecture"
            };
            return Err(Error::Invalid(format!(
                "{}: tensor `{name}` is {what}",
                path.display()
            )));
        };
        if shape.iter().product::<usize>() != weight.numel()
            || weight.cols != shape[shape.len() - 1]
        {
            return Err(Error::Shape {
                path: path.into(),
                name,
                expected: shape,
                got: vec![weight.rows, weight.cols],
            });
        }
        views.insert(
            name,
            TensorOut {
                weight,
                shape,
                dtype,
            },
        );
    }
    if let Some(name) = shapes.into_keys().min() {
        return Err(Error::MissingTensor {
            path: path.into(),
            name,
        });
    }
    Ok(views)
}

/// One tensor on its way to disk: a weight, its HF shape and the dtype to store it as.
struct TensorOut {
    weight: Weight,
    shape: Vec<usize>,
    dtype: DType,
}

impl View for TensorOut {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            DType::F32 => Dtype::F32,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Borrows the bytes when the weight is dense and already in the target dtype, else
    /// decodes/converts (through f32, with `half`'s slice conversions): compressed variants
    /// (sparse, quantized) are written as the dense matrices they stand for.
    fn data(&self) -> Cow<'_, [u8]> {
        if let Some(view) = self.weight.dense_view().filter(|v| v.dtype() == self.dtype) {
            return Cow::Borrowed(match view {
                WeightView::F32(s) => bytemuck::cast_slice(s),
                WeightView::F16(s) => bytemuck::cast_slice(s),
                WeightView::BF16(s) => bytemuck::cast_slice(s),
            });
        }
        let values = self.weight.to_f32_vec();
        Cow::Owned(match self.dtype {
            DType::F32 => bytemuck::cast_slice(&values).to_vec(),
            DType::F16 => half_bytes::<f16>(&values),
            DType::BF16 => half_bytes::<bf16>(&values),
        })
    }

    fn data_len(&self) -> usize {
        self.weight.numel() * self.dtype.size_of()
    }
}

/// `values` rounded to a 16-bit float type, as little-endian bytes.
fn half_bytes<T: bytemuck::Pod + Default>(values: &[f32]) -> Vec<u8>
where
    [T]: HalfFloatSliceExt,
{
    let mut out = vec![T::default(); values.len()];
    out.convert_from_f32_slice(values);
    bytemuck::cast_slice(&out).to_vec()
}

fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    }
}

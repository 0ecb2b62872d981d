//! Writing a safetensors file whose tensors are encoded one at a time while the file is
//! written (a model is never held encoded in memory at once), atomically.

use evopress_core::fsutil::write_atomically_with;
use evopress_core::{Error, Result};
use evopress_kernels::{DType, Weight};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// Produces a tensor's little-endian bytes.
pub type Encoder<'a> = Box<dyn Fn() -> Vec<u8> + Send + Sync + 'a>;

/// One tensor on its way to disk.
pub struct StTensor<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    encode: Encoder<'a>,
}

impl<'a> StTensor<'a> {
    pub fn new(dtype: Dtype, shape: Vec<usize>, encode: Encoder<'a>) -> Self {
        StTensor {
            dtype,
            shape,
            encode,
        }
    }

    /// Bytes the tensor takes in the file.
    pub fn n_bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

impl View for StTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let bytes = (self.encode)();
        // The encoders are this crate's; a wrong length would corrupt every later offset.
        assert_eq!(
            bytes.len(),
            self.n_bytes(),
            "encoder length for {:?}",
            self.shape
        );
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.n_bytes()
    }
}

/// Writes `tensors` (name, tensor) to `path` with `metadata` in the header. Returns the
/// bytes of tensor data written.
pub fn write(
    path: &Path,
    tensors: Vec<(String, StTensor<'_>)>,
    metadata: HashMap<String, String>,
) -> Result<usize> {
    let total = tensors.iter().map(|(_, t)| t.n_bytes()).sum();
    write_atomically_with(path, |tmp| {
        safetensors::serialize_to_file(tensors, &Some(metadata), tmp)
            .map_err(|e| Error::format(tmp, format!("writing safetensors: {e}")))
    })?;
    Ok(total)
}

/// The safetensors dtype of a float dtype.
pub fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
    }
}

/// `values` as little-endian bytes of `dtype` (16-bit types round to nearest even).
pub fn float_bytes(values: &[f32], dtype: DType) -> Vec<u8> {
    fn half_bytes<T: bytemuck::Pod + Default>(values: &[f32]) -> Vec<u8>
    where
        [T]: HalfFloatSliceExt,
    {
        let mut out = vec![T::default(); values.len()];
        out.convert_from_f32_slice(values);
        bytemuck::cast_slice(&out).to_vec()
    }
    match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::F16 => half_bytes::<f16>(values),
        DType::BF16 => half_bytes::<bf16>(values),
    }
}

/// A dense weight's elements as bytes of `dtype`: copied when already stored so, else decoded
/// and converted.
pub fn weight_bytes(w: &Weight, dtype: DType) -> Vec<u8> {
    use evopress_kernels::WeightView;
    match w.dense_view() {
        Some(WeightView::F32(s)) if dtype == DType::F32 => bytemuck::cast_slice(s).to_vec(),
        Some(WeightView::F16(s)) if dtype == DType::F16 => bytemuck::cast_slice(s).to_vec(),
        Some(WeightView::BF16(s)) if dtype == DType::BF16 => bytemuck::cast_slice(s).to_vec(),
        _ => float_bytes(&w.to_f32_vec(), dtype),
    }
}

/// The `torch_dtype` name transformers expects in `config.json`.
pub fn torch_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    }
}

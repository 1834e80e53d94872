//! Element types.

use mlx_metal_sys as sys;

/// The element type of an [`Array`](crate::Array).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `bool`
    Bool,
    /// `u8`
    Uint8,
    /// `u16`
    Uint16,
    /// `u32`
    Uint32,
    /// `u64`
    Uint64,
    /// `i8`
    Int8,
    /// `i16`
    Int16,
    /// `i32`
    Int32,
    /// `i64`
    Int64,
    /// IEEE half precision.
    Float16,
    /// `f32`
    Float32,
    /// `f64` (CPU only in MLX).
    Float64,
    /// Brain floating point.
    Bfloat16,
    /// Two `f32`s.
    Complex64,
}

/// Every element type.
const ALL: [Dtype; 14] = [
    Dtype::Bool,
    Dtype::Uint8,
    Dtype::Uint16,
    Dtype::Uint32,
    Dtype::Uint64,
    Dtype::Int8,
    Dtype::Int16,
    Dtype::Int32,
    Dtype::Int64,
    Dtype::Float16,
    Dtype::Float32,
    Dtype::Float64,
    Dtype::Bfloat16,
    Dtype::Complex64,
];

impl Dtype {
    pub(crate) fn to_sys(self) -> sys::mlx_dtype {
        use sys::mlx_dtype as D;
        match self {
            Dtype::Bool => D::MLX_BOOL,
            Dtype::Uint8 => D::MLX_UINT8,
            Dtype::Uint16 => D::MLX_UINT16,
            Dtype::Uint32 => D::MLX_UINT32,
            Dtype::Uint64 => D::MLX_UINT64,
            Dtype::Int8 => D::MLX_INT8,
            Dtype::Int16 => D::MLX_INT16,
            Dtype::Int32 => D::MLX_INT32,
            Dtype::Int64 => D::MLX_INT64,
            Dtype::Float16 => D::MLX_FLOAT16,
            Dtype::Float32 => D::MLX_FLOAT32,
            Dtype::Float64 => D::MLX_FLOAT64,
            Dtype::Bfloat16 => D::MLX_BFLOAT16,
            Dtype::Complex64 => D::MLX_COMPLEX64,
        }
    }

    pub(crate) fn from_sys(d: sys::mlx_dtype) -> Self {
        use sys::mlx_dtype as D;
        match d {
            D::MLX_BOOL => Dtype::Bool,
            D::MLX_UINT8 => Dtype::Uint8,
            D::MLX_UINT16 => Dtype::Uint16,
            D::MLX_UINT32 => Dtype::Uint32,
            D::MLX_UINT64 => Dtype::Uint64,
            D::MLX_INT8 => Dtype::Int8,
            D::MLX_INT16 => Dtype::Int16,
            D::MLX_INT32 => Dtype::Int32,
            D::MLX_INT64 => Dtype::Int64,
            D::MLX_FLOAT16 => Dtype::Float16,
            D::MLX_FLOAT32 => Dtype::Float32,
            D::MLX_FLOAT64 => Dtype::Float64,
            D::MLX_BFLOAT16 => Dtype::Bfloat16,
            D::MLX_COMPLEX64 => Dtype::Complex64,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::Uint8 | Dtype::Int8 => 1,
            Dtype::Uint16 | Dtype::Int16 | Dtype::Float16 | Dtype::Bfloat16 => 2,
            Dtype::Uint32 | Dtype::Int32 | Dtype::Float32 => 4,
            Dtype::Uint64 | Dtype::Int64 | Dtype::Float64 | Dtype::Complex64 => 8,
        }
    }

    /// True for the floating-point types.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::Float16 | Dtype::Float32 | Dtype::Float64 | Dtype::Bfloat16
        )
    }

    /// The type safetensors names `name` (`F32`, `BF16`, ...), if MLX has it.
    pub fn from_safetensors_name(name: &str) -> Option<Dtype> {
        ALL.into_iter().find(|d| d.safetensors_name() == name)
    }

    /// The name used by safetensors and Hugging Face configs (`F32`, `BF16`, ...).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::Uint8 => "U8",
            Dtype::Uint16 => "U16",
            Dtype::Uint32 => "U32",
            Dtype::Uint64 => "U64",
            Dtype::Int8 => "I8",
            Dtype::Int16 => "I16",
            Dtype::Int32 => "I32",
            Dtype::Int64 => "I64",
            Dtype::Float16 => "F16",
            Dtype::Float32 => "F32",
            Dtype::Float64 => "F64",
            Dtype::Bfloat16 => "BF16",
            Dtype::Complex64 => "C64",
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Dtype::Bool => "bool",
            Dtype::Uint8 => "uint8",
            Dtype::Uint16 => "uint16",
            Dtype::Uint32 => "uint32",
            Dtype::Uint64 => "uint64",
            Dtype::Int8 => "int8",
            Dtype::Int16 => "int16",
            Dtype::Int32 => "int32",
            Dtype::Int64 => "int64",
            Dtype::Float16 => "float16",
            Dtype::Float32 => "float32",
            Dtype::Float64 => "float64",
            Dtype::Bfloat16 => "bfloat16",
            Dtype::Complex64 => "complex64",
        };
        f.write_str(name)
    }
}

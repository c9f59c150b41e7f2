// Torch bindings of the qvgen kernels: schemas (namespace qvgen_ext), input validation, output
// allocation and dispatch. The only CPU translation unit that includes torch.
//
// One function per op serves the CPU, Meta (shape inference for fake tensors / torch.compile) and,
// when built with QVGEN_WITH_CUDA, CUDA dispatch keys: validate -> allocate -> run on the device.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#ifdef QVGEN_WITH_CUDA
#include "bindings_cuda.h"
#endif
#include "check.h"
#include "qvgen/kernels.h"

namespace qvgen {
namespace {

// Rows per parallel task: enough work per task to amortise the thread hand-off.
int64_t grain_rows(int64_t row_cost) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_cost)); }

void check_dtype(const char* op, const char* arg, const at::Tensor& t, at::ScalarType dtype) {
  QVGEN_CHECK_TYPE(t.scalar_type() == dtype, op, ": argument '", arg, "' expected dtype ", dtype, ", got ",
                   t.scalar_type());
}

void check_float(const char* op, const char* arg, const at::Tensor& t) {
  const auto s = t.scalar_type();
  QVGEN_CHECK_TYPE(s == at::kFloat || s == at::kHalf || s == at::kBFloat16, op, ": argument '", arg,
                   "' expected dtype float32, float16 or bfloat16, got ", s);
}

void check_shape(const char* op, const char* arg, const at::Tensor& t, at::IntArrayRef shape) {
  QVGEN_CHECK_VALUE(t.sizes() == shape, op, ": argument '", arg, "' expected shape ", shape, ", got ",
                    t.sizes());
}

void check_device(const char* op, const char* arg, const at::Tensor& t, const at::Tensor& ref) {
  QVGEN_CHECK_VALUE(t.device() == ref.device(), op, ": argument '", arg, "' expected a tensor on ",
                    ref.device(), ", got one on ", t.device());
}

// A per-row vector [M] of `dtype` on the device of `x`.
void check_per_row(const char* op, const char* arg, const at::Tensor& t, at::ScalarType dtype,
                   const at::Tensor& x) {
  check_dtype(op, arg, t, dtype);
  check_shape(op, arg, t, {x.size(0)});
  check_device(op, arg, t, x);
}

DType dtype_tag(at::ScalarType s) {
  return s == at::kHalf ? DType::kFloat16 : (s == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat32);
}

at::Tensor pack(const at::Tensor& codes, int64_t bits) {
  constexpr const char* op = "qvgen_ext::pack";
  check_bits(op, "bits", bits);
  check_dtype(op, "codes", codes, at::kByte);
  QVGEN_CHECK_VALUE(codes.dim() >= 1, op, ": argument 'codes' expected at least 1 dimension, got 0");
  const int64_t k = codes.size(-1);
  auto shape = codes.sizes().vec();
  shape.back() = packed_width(k, static_cast<int>(bits));
  at::Tensor out = at::empty(shape, codes.options());
  if (codes.is_meta() || out.numel() == 0) return out;
  const at::Tensor src = codes.contiguous();
  const int64_t rows = src.numel() / k;
  // The code range (<= P) is a data check of the op registry (qvgen_kernels.ops.pack), made once there: not
  // repeated here, where it cost a second pass over the codes and a device sync.
#ifdef QVGEN_WITH_CUDA
  if (src.is_cuda()) {
    cuda_pack(src, bits, out);
    return out;
  }
#endif
  const uint8_t* in = src.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  at::parallel_for(0, rows, grain_rows(k), [&](int64_t r0, int64_t r1) {
    cpu::pack_rows(in, k, static_cast<int>(bits), dst, r0, r1);
  });
  return out;
}

at::Tensor unpack(const at::Tensor& packed, int64_t bits, int64_t k) {
  constexpr const char* op = "qvgen_ext::unpack";
  check_bits(op, "bits", bits);
  check_dtype(op, "packed", packed, at::kByte);
  QVGEN_CHECK_VALUE(k >= 1, op, ": argument 'k' expected a positive int, got ", k);
  QVGEN_CHECK_VALUE(packed.dim() >= 1, op, ": argument 'packed' expected at least 1 dimension, got 0");
  const int64_t width = packed_width(k, static_cast<int>(bits));
  QVGEN_CHECK_VALUE(packed.size(-1) == width, op, ": argument 'packed' expected last dimension ", width,
                    " (packed width of k=", k, " at ", bits, " bits), got ", packed.size(-1));
  auto shape = packed.sizes().vec();
  shape.back() = k;
  at::Tensor out = at::empty(shape, packed.options());
  if (packed.is_meta() || out.numel() == 0) return out;
  const at::Tensor src = packed.contiguous();
#ifdef QVGEN_WITH_CUDA
  if (src.is_cuda()) {
    cuda_unpack(src, bits, k, out);
    return out;
  }
#endif
  const uint8_t* in = src.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  at::parallel_for(0, out.numel() / k, grain_rows(k), [&](int64_t r0, int64_t r1) {
    cpu::unpack_rows(in, k, static_cast<int>(bits), dst, r0, r1);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_per_token(const at::Tensor& x, int64_t bits,
                                                                              const at::Tensor& clip_lo,
                                                                              const at::Tensor& clip_hi) {
  constexpr const char* op = "qvgen_ext::quantize_per_token";
  check_bits(op, "bits", bits);
  check_float(op, "x", x);
  QVGEN_CHECK_VALUE(x.dim() == 2, op, ": argument 'x' expected a 2-D tensor [M, K], got shape ", x.sizes());
  const int64_t m = x.size(0), k = x.size(1);
  QVGEN_CHECK_VALUE(k >= 1, op, ": argument 'x' expected K >= 1, got shape ", x.sizes());
  check_per_row(op, "clip_lo", clip_lo, at::kFloat, x);
  check_per_row(op, "clip_hi", clip_hi, at::kFloat, x);
  const auto opts = x.options();
  at::Tensor packed = at::empty({m, packed_width(k, static_cast<int>(bits))}, opts.dtype(at::kByte));
  at::Tensor scale = at::empty({m}, opts.dtype(at::kFloat));
  at::Tensor zero = at::empty({m}, opts.dtype(at::kInt));
  at::Tensor rowsum = at::empty({m}, opts.dtype(at::kInt));
  if (x.is_meta() || m == 0) return {packed, scale, zero, rowsum};
  // The CPU kernel reads fp32; upcasting fp16/bf16 is exact and is the reference's first step.
  const at::Tensor xs = x.is_cuda() ? x.contiguous() : x.to(at::kFloat).contiguous();
  const at::Tensor lo = clip_lo.contiguous(), hi = clip_hi.contiguous();
  QuantArgs args{xs.data_ptr(), dtype_tag(xs.scalar_type()), m, k, static_cast<int>(bits),
                 lo.data_ptr<float>(), hi.data_ptr<float>(), packed.data_ptr<uint8_t>(),
                 scale.data_ptr<float>(), zero.data_ptr<int32_t>(), rowsum.data_ptr<int32_t>()};
#ifdef QVGEN_WITH_CUDA
  if (xs.is_cuda()) {
    cuda_quantize_per_token(xs, args);
    return {packed, scale, zero, rowsum};
  }
#endif
  at::parallel_for(0, m, grain_rows(k), [&](int64_t r0, int64_t r1) { cpu::quantize_per_token_rows(args, r0, r1); });
  return {packed, scale, zero, rowsum};
}

// w_scale / w_zero: fp32 [N] (per channel) or [N, G] with G dividing k. Returns G.
int64_t check_weight_qparams(const char* op, const at::Tensor& w_scale, const at::Tensor& w_zero,
                             const at::Tensor& w_packed, int64_t k) {
  const int64_t n = w_packed.size(0);
  check_dtype(op, "w_scale", w_scale, at::kFloat);
  check_dtype(op, "w_zero", w_zero, at::kFloat);
  check_device(op, "w_scale", w_scale, w_packed);
  check_device(op, "w_zero", w_zero, w_packed);
  QVGEN_CHECK_VALUE((w_scale.dim() == 1 || w_scale.dim() == 2) && w_scale.size(0) == n, op,
                    ": argument 'w_scale' expected shape [", n, "] or [", n, ", G], got ", w_scale.sizes());
  check_shape(op, "w_zero", w_zero, w_scale.sizes());
  const int64_t groups = w_scale.dim() == 2 ? w_scale.size(1) : 1;
  QVGEN_CHECK_VALUE(groups >= 1 && k % groups == 0, op, ": argument 'w_scale' expected a group count G dividing k=",
                    k, ", got G=", groups);
  return groups;
}

at::Tensor lowbit_gemm(const at::Tensor& a_packed, const at::Tensor& a_scale, const at::Tensor& a_zero,
                       const at::Tensor& a_rowsum, const at::Tensor& w_packed, const at::Tensor& w_scale,
                       const at::Tensor& w_zero, const std::optional<at::Tensor>& bias, int64_t w_bits,
                       int64_t a_bits, int64_t k, at::ScalarType out_dtype) {
  constexpr const char* op = "qvgen_ext::lowbit_gemm";
  check_bits(op, "w_bits", w_bits);
  check_bits(op, "a_bits", a_bits);
  QVGEN_CHECK_VALUE(k >= 1, op, ": argument 'k' expected a positive int, got ", k);
  QVGEN_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16, op,
                   ": argument 'out_dtype' expected float32, float16 or bfloat16, got ", out_dtype);
  check_dtype(op, "a_packed", a_packed, at::kByte);
  check_dtype(op, "w_packed", w_packed, at::kByte);
  check_device(op, "w_packed", w_packed, a_packed);
  const int64_t a_width = packed_width(k, static_cast<int>(a_bits));
  const int64_t w_width = packed_width(k, static_cast<int>(w_bits));
  QVGEN_CHECK_VALUE(a_packed.dim() == 2 && a_packed.size(1) == a_width, op,
                    ": argument 'a_packed' expected shape [M, ", a_width, "] (k=", k, " at ", a_bits,
                    " bits), got ", a_packed.sizes());
  QVGEN_CHECK_VALUE(w_packed.dim() == 2 && w_packed.size(1) == w_width, op,
                    ": argument 'w_packed' expected shape [N, ", w_width, "] (k=", k, " at ", w_bits,
                    " bits), got ", w_packed.sizes());
  check_per_row(op, "a_scale", a_scale, at::kFloat, a_packed);
  check_per_row(op, "a_zero", a_zero, at::kInt, a_packed);
  check_per_row(op, "a_rowsum", a_rowsum, at::kInt, a_packed);
  const int64_t groups = check_weight_qparams(op, w_scale, w_zero, w_packed, k);
  const int64_t m = a_packed.size(0), n = w_packed.size(0);
  if (bias.has_value()) {
    check_float(op, "bias", *bias);
    check_shape(op, "bias", *bias, {n});
    check_device(op, "bias", *bias, a_packed);
  }
  const bool on_cuda = a_packed.is_cuda();
  // The CPU kernel writes fp32; the cast to out_dtype afterwards is the reference's last step.
  at::Tensor out = at::empty({m, n}, a_packed.options().dtype(on_cuda ? out_dtype : at::kFloat));
  if (a_packed.is_meta()) return out.to(out_dtype);
  if (out.numel() == 0) return out.to(out_dtype);
  // Make the inputs dense; a bias of any float dtype is upcast exactly to fp32.
  const at::Tensor ap = a_packed.contiguous(), as = a_scale.contiguous(), az = a_zero.contiguous();
  const at::Tensor ar = a_rowsum.contiguous(), wp = w_packed.contiguous();
  const at::Tensor ws = w_scale.contiguous(), wz = w_zero.contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  GemmArgs args{ap.data_ptr<uint8_t>(), as.data_ptr<float>(), az.data_ptr<int32_t>(), ar.data_ptr<int32_t>(),
                wp.data_ptr<uint8_t>(), ws.data_ptr<float>(), wz.data_ptr<float>(),
                b.defined() ? b.data_ptr<float>() : nullptr, m, n, k, groups, w_scale.dim() == 2, static_cast<int>(a_bits),
                static_cast<int>(w_bits), out.data_ptr(), dtype_tag(out.scalar_type())};
#ifdef QVGEN_WITH_CUDA
  if (on_cuda) {
    cuda_lowbit_gemm(ap, args);
    return out;
  }
#endif
  at::parallel_for(0, m, grain_rows(n * k), [&](int64_t m0, int64_t m1) { cpu::lowbit_gemm_rows(args, m0, m1); });
  return out.to(out_dtype);
}

}  // namespace
}  // namespace qvgen

TORCH_LIBRARY(qvgen_ext, m) {
  m.def("pack(Tensor codes, int bits) -> Tensor");
  m.def("unpack(Tensor packed, int bits, int k) -> Tensor");
  m.def("quantize_per_token(Tensor x, int bits, Tensor clip_lo, Tensor clip_hi)"
        " -> (Tensor packed, Tensor scale, Tensor zero, Tensor rowsum)");
  m.def("lowbit_gemm(Tensor a_packed, Tensor a_scale, Tensor a_zero, Tensor a_rowsum, Tensor w_packed,"
        " Tensor w_scale, Tensor w_zero, Tensor? bias, int w_bits, int a_bits, int k, ScalarType out_dtype)"
        " -> Tensor");
}

// The same functions serve every backend: they branch on the device after validation.
#define QVGEN_REGISTER_IMPLS(m)                             \
  m.impl("pack", &qvgen::pack);                             \
  m.impl("unpack", &qvgen::unpack);                         \
  m.impl("quantize_per_token", &qvgen::quantize_per_token); \
  m.impl("lowbit_gemm", &qvgen::lowbit_gemm)

TORCH_LIBRARY_IMPL(qvgen_ext, CPU, m) { QVGEN_REGISTER_IMPLS(m); }
TORCH_LIBRARY_IMPL(qvgen_ext, Meta, m) { QVGEN_REGISTER_IMPLS(m); }
#ifdef QVGEN_WITH_CUDA
TORCH_LIBRARY_IMPL(qvgen_ext, CUDA, m) { QVGEN_REGISTER_IMPLS(m); }
#endif

// Importable as qvgen_kernels._C: an empty Python module whose import runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                                          nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}

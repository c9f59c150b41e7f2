// Torch bindings of the tensor-core GEMMs of the CUDA extension (qvgen/tc.h): the load-time weight layout and
// the deployed linear layer, with the semantics of the Triton backend's prepack_weight / prepacked_linear
// (qvgen_kernels/triton/linear.py) and the same layouts (qvgen_kernels/triton/layout.py).
//
//   qvgen_ext::tc_prepack_weight(Tensor w_packed, Tensor w_scale, Tensor w_zero, int w_bits, int a_bits, int k)
//       -> (Tensor w_kernel, Tensor colsum, Tensor scale, Tensor zero)                 CPU, CUDA, Meta
//   qvgen_ext::tc_linear(Tensor x, Tensor w_kernel, Tensor colsum, Tensor scale, Tensor zero, Tensor? bias,
//       int w_bits, int a_bits, int k, int n, Tensor clip_lo, Tensor clip_hi, int kernel=0, int max_blocks=0)
//       -> Tensor                                                                      CUDA, Meta
//
// kernel: 0 picks the kernel for the device (wgmma on sm_90, mma.sync on sm_80 / sm_86 / sm_89), 80 forces
// mma.sync, 90 wgmma. max_blocks > 0 caps the persistent wgmma grid (tests reach several tiles per block and
// several laps of the stage ring at small shapes). Arguments are validated once, in Python, by the op registry;
// the checks here guard the memory accesses (shapes, dtypes, one device, contiguity, the 16-byte alignment of
// the TMA / cp.async operand). On CUDA the prepack also encodes the weight's TMA descriptor once (tc.h
// tc_prepare_weight). Compiled only in CUDA builds with the CUTLASS headers (setup.py defines QVGEN_WITH_TC).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "bindings_cuda.h"
#include "qvgen/tc.h"

namespace qvgen {
namespace {

constexpr const char* kPrepack = "qvgen_ext::tc_prepack_weight";
constexpr const char* kLinear = "qvgen_ext::tc_linear";

DType dtype_tag(at::ScalarType s) {
  return s == at::kHalf ? DType::kFloat16 : (s == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat32);
}

int64_t kernel_k(int64_t k) { return tc_round_up(k, kTcKAlign); }

// Groups of the weight constants [N] or [N, G]; G > 1 needs groups of a multiple of 32 columns.
int64_t groups_of(const char* op, const at::Tensor& scale, int64_t n, int64_t k) {
  QVGEN_CHECK_VALUE((scale.dim() == 1 || scale.dim() == 2) && scale.size(0) == n, op,
                    ": argument 'w_scale' expected shape [N] or [N, G] with N = ", n, ", got ", scale.sizes());
  const int64_t groups = scale.dim() == 2 ? scale.size(1) : 1;
  QVGEN_CHECK_VALUE(groups == 1 || (groups >= 1 && k % groups == 0 && (k / groups) % kTcMinGroup == 0), op,
                    ": argument 'w_scale' expected groups of a multiple of ", kTcMinGroup,
                    " columns (tensor-core GEMM), got G = ", groups, " for K = ", k);
  return groups;
}

// Every tensor argument on the device of x (the kernels dereference their pointers there).
void check_device(const at::Tensor& x, const char* arg, const at::Tensor& t) {
  QVGEN_CHECK_VALUE(t.device() == x.device(), kLinear, ": argument '", arg, "' expected on ", x.device(),
                    " (the device of x), got ", t.device());
}

at::Tensor unpack_codes(const at::Tensor& w_packed, int64_t bits, int64_t k) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("qvgen_ext::unpack", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, int64_t)>();
  return op.call(w_packed, bits, k);
}

// layout.py repack_weight: codes [N, K] -> uint8 [NP / 2, KP] (two rows 64 apart per byte) or int8 [NP, KP].
at::Tensor repack(const at::Tensor& codes, int64_t bits, int64_t n, int64_t k) {
  const int64_t np = tc_round_up(n, kTcRowBlock), kp = kernel_k(k);
  if (bits == 8) {
    at::Tensor w = at::zeros({np, kp}, codes.options().dtype(at::kChar));
    w.narrow(0, 0, n).narrow(1, 0, k).copy_((codes.to(at::kShort) - 128).to(at::kChar));
    return w;
  }
  at::Tensor padded = at::zeros({np, kp}, codes.options());
  padded.narrow(0, 0, n).narrow(1, 0, k).copy_(codes);
  const at::Tensor blocks = padded.view({np / kTcRowBlock, 2, kTcRowBlock / 2, kp});
  return blocks.select(1, 0).bitwise_or(blocks.select(1, 1).bitwise_left_shift(4)).reshape({np / 2, kp});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tc_prepack_weight(const at::Tensor& w_packed,
                                                                             const at::Tensor& w_scale,
                                                                             const at::Tensor& w_zero,
                                                                             int64_t w_bits, int64_t a_bits,
                                                                             int64_t k) {
  check_bits(kPrepack, "w_bits", w_bits);
  check_bits(kPrepack, "a_bits", a_bits);
  QVGEN_CHECK_VALUE(w_packed.dim() == 2 && w_packed.scalar_type() == at::kByte &&
                        w_packed.size(1) == packed_width(k, static_cast<int>(w_bits)),
                    kPrepack, ": argument 'w_packed' expected uint8 [N, ", packed_width(k, static_cast<int>(w_bits)),
                    "], got ", w_packed.scalar_type(), " ", w_packed.sizes());
  const int64_t n = w_packed.size(0);
  const int64_t groups = groups_of(kPrepack, w_scale, n, k);
  QVGEN_CHECK_VALUE(w_zero.numel() == n * groups, kPrepack, ": argument 'w_zero' expected ", n * groups,
                    " values (the shape of w_scale), got ", w_zero.sizes());
  const at::Tensor scale = w_scale.reshape({n, groups}).to(at::kFloat).contiguous();
  const at::Tensor zero = w_zero.reshape({n, groups}).to(at::kFloat).contiguous();
  const int64_t np = tc_round_up(n, kTcRowBlock), kp = kernel_k(k);
  if (w_packed.is_meta()) {
    const auto opts = w_packed.options();
    at::Tensor w = w_bits == 8 ? at::empty({np, kp}, opts.dtype(at::kChar)) : at::empty({np / 2, kp}, opts);
    return {w, at::empty({n, groups}, opts.dtype(at::kInt)), scale, zero};
  }
  const at::Tensor codes = unpack_codes(w_packed.contiguous(), w_bits, k);
  const at::Tensor colsum = codes.to(at::kInt).view({n, groups, k / groups}).sum(-1, false, at::kInt);
  at::Tensor w = repack(codes, w_bits, n, k);
  if (w.is_cuda()) {
    const c10::cuda::CUDAGuard guard(w.device());
    QVGEN_CHECK(cuda::tc_prepare_weight(w.data_ptr(), n, kp, static_cast<int>(w_bits)) == cudaSuccess, kPrepack,
                ": encoding the weight's TMA descriptor failed");
  }
  return {w, colsum, scale, zero};
}

at::Tensor tc_linear(const at::Tensor& x, const at::Tensor& w_kernel, const at::Tensor& colsum,
                     const at::Tensor& scale, const at::Tensor& zero, const std::optional<at::Tensor>& bias,
                     int64_t w_bits, int64_t a_bits, int64_t k, int64_t n, const at::Tensor& clip_lo,
                     const at::Tensor& clip_hi, int64_t kernel, int64_t max_blocks) {
  check_bits(kLinear, "w_bits", w_bits);
  check_bits(kLinear, "a_bits", a_bits);
  const auto xs = x.scalar_type();
  QVGEN_CHECK_TYPE(xs == at::kFloat || xs == at::kHalf || xs == at::kBFloat16, kLinear,
                   ": argument 'x' expected dtype float32, float16 or bfloat16, got ", xs);
  QVGEN_CHECK_VALUE(x.dim() == 2 && x.size(1) == k, kLinear, ": argument 'x' expected [M, ", k, "], got ",
                    x.sizes());
  const int64_t m = x.size(0), np = tc_round_up(n, kTcRowBlock), kp = kernel_k(k);
  const int64_t groups = colsum.dim() == 2 ? colsum.size(1) : 0;
  QVGEN_CHECK_VALUE(groups >= 1 && colsum.size(0) == n && colsum.scalar_type() == at::kInt &&
                        scale.sizes() == colsum.sizes() && zero.sizes() == colsum.sizes() &&
                        scale.scalar_type() == at::kFloat && zero.scalar_type() == at::kFloat &&
                        scale.is_contiguous() && zero.is_contiguous() && colsum.is_contiguous() &&
                        (groups == 1 || (k % groups == 0 && (k / groups) % kTcMinGroup == 0)),
                    kLinear, ": arguments 'colsum', 'scale', 'zero' expected the int32 / fp32 / fp32 [N, G] of ",
                    "tc_prepack_weight, got ", colsum.sizes(), " ", scale.sizes(), " ", zero.sizes());
  const std::vector<int64_t> w_shape = w_bits == 8 ? std::vector<int64_t>{np, kp} : std::vector<int64_t>{np / 2, kp};
  QVGEN_CHECK_VALUE(w_kernel.sizes() == at::IntArrayRef(w_shape) && w_kernel.is_contiguous() &&
                        w_kernel.element_size() == 1,
                    kLinear, ": argument 'w_kernel' expected the contiguous ", at::IntArrayRef(w_shape),
                    " of tc_prepack_weight, got ", w_kernel.sizes());
  QVGEN_CHECK_VALUE(clip_lo.numel() == m && clip_hi.numel() == m && clip_lo.scalar_type() == at::kFloat &&
                        clip_hi.scalar_type() == at::kFloat,
                    kLinear, ": arguments 'clip_lo', 'clip_hi' expected fp32 [M] with M = ", m);
  QVGEN_CHECK_VALUE(!bias.has_value() || bias->numel() == n, kLinear, ": argument 'bias' expected [", n, "]");
  QVGEN_CHECK_VALUE(kernel == 0 || kernel == 80 || kernel == 90, kLinear,
                    ": argument 'kernel' expected 0 (auto), 80 (mma.sync) or 90 (wgmma), got ", kernel);
  QVGEN_CHECK_VALUE(max_blocks >= 0, kLinear, ": argument 'max_blocks' expected >= 0 (0: one block per SM), got ",
                    max_blocks);
  check_device(x, "w_kernel", w_kernel);
  check_device(x, "colsum", colsum);
  check_device(x, "scale", scale);
  check_device(x, "zero", zero);
  check_device(x, "clip_lo", clip_lo);
  check_device(x, "clip_hi", clip_hi);
  if (bias.has_value()) check_device(x, "bias", *bias);
  at::Tensor out = at::empty({m, n}, x.options());
  if (x.is_meta() || m == 0 || n == 0) return out;
  // TMA (sm_90a) and cp.async (sm_80) read the weight in 16-byte units from its base (its rows, KP bytes, are
  // multiples of 128): a view at an odd offset would fault or read the wrong bytes.
  QVGEN_CHECK_VALUE(reinterpret_cast<uintptr_t>(w_kernel.data_ptr()) % 16 == 0, kLinear,
                    ": argument 'w_kernel' expected a 16-byte aligned data pointer, got an address = ",
                    reinterpret_cast<uintptr_t>(w_kernel.data_ptr()) % 16, " mod 16 (storage offset ",
                    w_kernel.storage_offset(), ")");

  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dev = x.options();
  at::Tensor a8 = at::empty({m, kp}, dev.dtype(at::kChar));
  const int64_t mp = tc_token_rows(m);  // whole token tiles of every kernel (tc_tiles.h)
  at::Tensor a_scale = at::empty({mp}, dev.dtype(at::kFloat));
  at::Tensor a_zero = at::empty({mp}, dev.dtype(at::kInt));
  at::Tensor a_sums = at::empty({groups, mp}, dev.dtype(at::kInt));
  const at::Tensor lo = clip_lo.contiguous(), hi = clip_hi.contiguous();
  const at::Tensor xk = x.stride(1) == 1 ? x : x.contiguous();  // the quantize reads rows with unit stride
  TcQuantArgs q{xk.data_ptr(), dtype_tag(xs), m, mp, k, kp, xk.stride(0), groups, static_cast<int>(a_bits),
                lo.data_ptr<float>(), hi.data_ptr<float>(), a8.data_ptr<int8_t>(), a_scale.data_ptr<float>(),
                a_zero.data_ptr<int32_t>(), a_sums.data_ptr<int32_t>()};
  check_launch(kLinear, cuda::tc_quantize(q, stream));
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  TcGemmArgs g{a8.data_ptr<int8_t>(), a_scale.data_ptr<float>(), a_zero.data_ptr<int32_t>(),
               a_sums.data_ptr<int32_t>(), w_kernel.data_ptr(), colsum.data_ptr<int32_t>(),
               scale.data_ptr<float>(), zero.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr,
               out.data_ptr(), dtype_tag(xs), m, mp, n, k, kp, groups, static_cast<int>(w_bits),
               static_cast<int>(a_bits), max_blocks};
  check_launch(kLinear, cuda::tc_gemm(g, static_cast<TcKernel>(kernel), stream));
  return out;
}

}  // namespace
}  // namespace qvgen

TORCH_LIBRARY_FRAGMENT(qvgen_ext, m) {
  m.def(
      "tc_prepack_weight(Tensor w_packed, Tensor w_scale, Tensor w_zero, int w_bits, int a_bits, int k) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "tc_linear(Tensor x, Tensor w_kernel, Tensor colsum, Tensor scale, Tensor zero, Tensor? bias, int w_bits, "
      "int a_bits, int k, int n, Tensor clip_lo, Tensor clip_hi, int kernel=0, int max_blocks=0) -> Tensor");
}
TORCH_LIBRARY_IMPL(qvgen_ext, CPU, m) { m.impl("tc_prepack_weight", &qvgen::tc_prepack_weight); }
TORCH_LIBRARY_IMPL(qvgen_ext, CUDA, m) {
  m.impl("tc_prepack_weight", &qvgen::tc_prepack_weight);
  m.impl("tc_linear", &qvgen::tc_linear);
}
TORCH_LIBRARY_IMPL(qvgen_ext, Meta, m) {
  m.impl("tc_prepack_weight", &qvgen::tc_prepack_weight);
  m.impl("tc_linear", &qvgen::tc_linear);
}

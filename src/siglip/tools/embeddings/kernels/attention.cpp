// siglip's fused attention for CPUs with AVX-512 BF16: softmax(q k^T * scale) v for each head of each sequence,
// no mask, in bf16 (products by `vdpbf16ps`) or float32 (by FMA), with float32 sums. Built by
// `siglip.tools.embeddings.fused_attention` with the machine's C++ compiler; called by eager towers through
// ctypes and by compiled packages through the C shim AOTInductor generates a call to.
//
// Per head of a sequence (or part of its queries), the keys and values are packed into the 32-bit units the
// products multiply (a pair of bf16 values, or one float); then each block of 4 queries computes its scores
// (float32, in L1), its softmax (one exponential a score, by a polynomial accurate to ~3e-6) and its output, so
// that no score leaves the caches.
#include <immintrin.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

using bf16 = uint16_t;
constexpr int kMaxDim = 128;  // head sizes up to this: 8 vectors of 16 outputs
constexpr int kRows = 4;      // queries whose scores are computed together (each load of keys serves them all)

struct alignas(64) Line {  // a vector's worth of scratch, aligned for it (std::vector<__m512> would not be)
  float x[16];
};

// values of T in a 32-bit unit of the products: a pair of bf16, or one float
template <typename T>
constexpr int kPer = std::is_same_v<T, bf16> ? 2 : 1;

template <typename T>
inline __m512 madd(__m512 acc, __m512 a, __m512 b) {
  if constexpr (std::is_same_v<T, bf16>)
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);  // acc + a.even b.even + a.odd b.odd, per lane
  else
    return _mm512_fmadd_ps(a, b, acc);
}

inline __m512 broadcast(const uint32_t* unit) { return _mm512_castsi512_ps(_mm512_set1_epi32((int)*unit)); }

inline __mmask16 first(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

inline __m512 exp_nonpositive(__m512 x) {
  // 2^n p(r) with r = x - n ln2 in [-ln2/2, ln2/2] and p the degree-5 Taylor polynomial of e^r; x is clamped
  // first (e^-87 is about float32's smallest normal), so that no r leaves the polynomial's range
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 120);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// scores[r][16 NV keys] = sum over units of q's unit (broadcast) times the keys' packed units
template <typename T, int NV>
inline void scores_block(const uint32_t* const* q, const __m512* k, int units, float* s, int64_t ld) {
  __m512 acc[kRows][NV];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int u = 0; u < units; ++u) {
    __m512 b[NV];
    for (int c = 0; c < NV; ++c) b[c] = k[(int64_t)c * units + u];
    for (int r = 0; r < kRows; ++r) {
      const __m512 a = broadcast(q[r] + u);
      for (int c = 0; c < NV; ++c) acc[r][c] = madd<T>(acc[r][c], a, b[c]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(s + r * ld + c * 16, acc[r][c]);
}

// the score columns in chunks of 1-4 vectors, as even as possible (13 = 3 + 3 + 3 + 4), so that no chunk is
// left with too few accumulators to hide the products' latency
template <typename T>
void scores_rows(const uint32_t* const* q, const __m512* k, int units, int vectors, float* s, int64_t ld) {
  const int chunks = (vectors + 3) / 4;
  for (int chunk = 0, done = 0; chunk < chunks; ++chunk) {
    const int n = (vectors - done) / (chunks - chunk);
    const __m512* kc = k + (int64_t)done * units;
    float* sc = s + done * 16;
    switch (n) {
      case 4: scores_block<T, 4>(q, kc, units, sc, ld); break;
      case 3: scores_block<T, 3>(q, kc, units, sc, ld); break;
      case 2: scores_block<T, 2>(q, kc, units, sc, ld); break;
      default: scores_block<T, 1>(q, kc, units, sc, ld); break;
    }
    done += n;
  }
}

// out[r][16 DV outputs] = sum over units of keys of the weights' unit (broadcast) times the values' packed units
template <typename T, int ROWS, int DV>
inline void output_block(const uint32_t* w, int64_t ld, const __m512* v, int64_t units, float* o) {
  __m512 acc[ROWS][DV];
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < DV; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < units; ++t) {
    __m512 b[DV];
    for (int c = 0; c < DV; ++c) b[c] = v[t * DV + c];
    for (int r = 0; r < ROWS; ++r) {
      const __m512 a = broadcast(w + r * ld + t);
      for (int c = 0; c < DV; ++c) acc[r][c] = madd<T>(acc[r][c], a, b[c]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < DV; ++c) _mm512_storeu_ps(o + (r * DV + c) * 16, acc[r][c]);
}

template <typename T>
struct Head {
  const T *q, *k, *v;
  T* out;
  int64_t q_step, k_step, v_step, out_step;  // elements from one position to the next
};

// k packed as [vector of 16 keys][unit of the head]: one gather of 16 keys' unit each (offsets in elements,
// scaled by the element's size: any stride, any alignment)
template <typename T>
void pack_keys(const Head<T>& h, int64_t length, int units, int vectors, __m512* k) {
  const __m512i lanes = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)h.k_step));
  for (int c = 0; c < vectors; ++c) {
    const __mmask16 keys = first(length - (int64_t)c * 16);
    const T* src = h.k + (int64_t)c * 16 * h.k_step;
    for (int u = 0; u < units; ++u)
      k[(int64_t)c * units + u] = _mm512_castsi512_ps(
          _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), keys, lanes, src + kPer<T> * u, sizeof(T)));
  }
}

// v packed as [unit of keys][DV vectors of 16 dims]: bf16 pairs two keys' values of a dimension; zeros pad
template <typename T, int DV>
void pack_values(const Head<T>& h, int64_t length, int dim, __m512* v) {
  for (int64_t t = 0; t * kPer<T> < length; ++t) {
    const T* row = h.v + kPer<T> * t * h.v_step;
    for (int c = 0; c < DV; ++c) {
      const __mmask16 dims = first(dim - c * 16);
      if constexpr (std::is_same_v<T, bf16>) {
        __m512i pair = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(dims, row + c * 16));
        if (2 * t + 1 < length) {
          const __m256i next = _mm256_maskz_loadu_epi16(dims, row + h.v_step + c * 16);
          pair = _mm512_or_si512(pair, _mm512_slli_epi32(_mm512_cvtepu16_epi32(next), 16));
        }
        v[t * DV + c] = _mm512_castsi512_ps(pair);
      } else {
        v[t * DV + c] = _mm512_maskz_loadu_ps(dims, row + c * 16);
      }
    }
  }
}

template <typename T, int OUT_ROWS, int DV>
void attend(const Head<T>& h, int64_t length, int dim, int64_t row_begin, int64_t row_end, float scale,
            std::vector<Line>& scratch) {
  const int units = dim / kPer<T>;
  const int vectors = (int)((length + 15) / 16);  // of score columns
  const int64_t key_units = (length + kPer<T> - 1) / kPer<T>;
  const int64_t ld = (int64_t)vectors * 16;  // floats a row of scores
  const int64_t ldw = ld / kPer<T>;          // 32-bit units a row of weights (an odd length's last pair: a zero)
  const int64_t need = (int64_t)vectors * units + key_units * DV + kRows * vectors + kRows * DV + kRows * vectors;
  if ((int64_t)scratch.size() < need) scratch.resize(need);
  __m512* k = (__m512*)scratch.data();
  __m512* v = k + (int64_t)vectors * units;
  float* s = (float*)(v + key_units * DV);
  float* o = s + kRows * ld;
  uint32_t* w = (uint32_t*)(o + kRows * DV * 16);
  pack_keys(h, length, units, vectors, k);
  pack_values<T, DV>(h, length, dim, v);

  const __m512 scale16 = _mm512_set1_ps(scale);
  for (int64_t i0 = row_begin; i0 < row_end; i0 += kRows) {
    const uint32_t* q[kRows];
    for (int r = 0; r < kRows; ++r) q[r] = (const uint32_t*)(h.q + std::min(i0 + r, row_end - 1) * h.q_step);
    scores_rows<T>(q, k, units, vectors, s, ld);
    for (int r = 0; r < kRows; ++r) {
      float* row = s + r * ld;
      __m512 top = _mm512_set1_ps(-INFINITY);
      for (int c = 0; c < vectors; ++c)
        top = _mm512_mask_max_ps(top, first(length - c * 16), top, _mm512_loadu_ps(row + c * 16));
      const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(top) * scale);
      __m512 sum = _mm512_setzero_ps();
      for (int c = 0; c < vectors; ++c) {
        const __m512 e = _mm512_maskz_mov_ps(
            first(length - c * 16), exp_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(row + c * 16), scale16, shift)));
        _mm512_storeu_ps(row + c * 16, e);
        sum = _mm512_add_ps(sum, e);
      }
      const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
      for (int c = 0; c < vectors; ++c) {
        const __m512 weight = _mm512_mul_ps(_mm512_loadu_ps(row + c * 16), inverse);
        if constexpr (std::is_same_v<T, bf16>)
          _mm256_storeu_si256((__m256i*)((bf16*)(w + r * ldw) + c * 16), (__m256i)_mm512_cvtneps_pbh(weight));
        else
          _mm512_storeu_ps((float*)(w + r * ldw) + c * 16, weight);
      }
    }
    for (int r = 0; r < kRows; r += OUT_ROWS)
      output_block<T, OUT_ROWS, DV>(w + r * ldw, ldw, v, key_units, o + r * DV * 16);
    for (int r = 0; r < kRows && i0 + r < row_end; ++r) {
      T* dst = h.out + (i0 + r) * h.out_step;
      for (int c = 0; c < DV; ++c) {
        const __m512 out = _mm512_loadu_ps(o + (r * DV + c) * 16);
        if constexpr (std::is_same_v<T, bf16>)
          _mm256_mask_storeu_epi16(dst + c * 16, first(dim - c * 16), (__m256i)_mm512_cvtneps_pbh(out));
        else
          _mm512_mask_storeu_ps(dst + c * 16, first(dim - c * 16), out);
      }
    }
  }
}

template <typename T>
using Kernel = void (*)(const Head<T>&, int64_t, int, int64_t, int64_t, float, std::vector<Line>&);

template <typename T>
Kernel<T> kernel_for(int vectors) {
  switch (vectors) {  // outputs 4 rows at a time, 2 past 6 vectors (4 x 8 accumulators would not fit the registers)
    case 1: return attend<T, 4, 1>;
    case 2: return attend<T, 4, 2>;
    case 3: return attend<T, 4, 3>;
    case 4: return attend<T, 4, 4>;
    case 5: return attend<T, 4, 5>;
    case 6: return attend<T, 4, 6>;
    case 7: return attend<T, 2, 7>;
    default: return attend<T, 2, 8>;
  }
}

// whether the kernel refuses these: an odd head size or one it has no registers for, a key stride past its
// gathers' 32-bit offsets, a scale that is not a positive finite number, or no thread
inline bool refused(int64_t dim, int64_t key_step, double scale, int64_t threads) {
  return dim < 2 || dim % 2 || dim > kMaxDim || key_step < 0 || 15 * key_step > INT32_MAX || !(scale > 0) ||
         !std::isfinite(scale) || threads < 1;
}

template <typename T>
int run(const T* q, const T* k, const T* v, T* out, int64_t batch, int64_t heads, int64_t length, int64_t dim,
        const int64_t* q_strides, const int64_t* k_strides, const int64_t* v_strides, const int64_t* out_strides,
        float scale, int threads) {
  if (refused(dim, k_strides[2], scale, threads)) return 1;
  if (batch == 0 || heads == 0 || length == 0) return 0;
  const Kernel<T> kernel = kernel_for<T>((int)((dim + 15) / 16));
  // the heads' rows in parts (each packs its head's keys and values), so that a batch of one sequence still
  // gives every thread work; none empty
  const int64_t tasks = batch * heads;
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>((4 * threads + tasks - 1) / tasks, (length + 15) / 16));
  const int64_t rows = (length + wanted - 1) / wanted;
  const int64_t parts = (length + rows - 1) / rows;
#pragma omp parallel num_threads(threads)
  {
    std::vector<Line> scratch;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks * parts; ++t) {
      const int64_t b = t / parts / heads, hd = t / parts % heads, part = t % parts;
      const Head<T> h{q + b * q_strides[0] + hd * q_strides[1],       k + b * k_strides[0] + hd * k_strides[1],
                      v + b * v_strides[0] + hd * v_strides[1],       out + b * out_strides[0] + hd * out_strides[1],
                      q_strides[2], k_strides[2], v_strides[2], out_strides[2]};
      kernel(h, length, (int)dim, part * rows, std::min(length, (part + 1) * rows), scale, scratch);
    }
  }
  return 0;
}

}  // namespace

// Both return 0, or 1 for inputs they refuse (`refused`). Strides (in elements) are of the batch, head and
// position dimensions; each head's values are contiguous.
extern "C" int siglip_attention_bf16(const bf16* q, const bf16* k, const bf16* v, bf16* out, int64_t batch,
                                     int64_t heads, int64_t length, int64_t dim, const int64_t* q_strides,
                                     const int64_t* k_strides, const int64_t* v_strides, const int64_t* out_strides,
                                     float scale, int threads) {
  return run(q, k, v, out, batch, heads, length, dim, q_strides, k_strides, v_strides, out_strides, scale, threads);
}

extern "C" int siglip_attention_f32(const float* q, const float* k, const float* v, float* out, int64_t batch,
                                    int64_t heads, int64_t length, int64_t dim, const int64_t* q_strides,
                                    const int64_t* k_strides, const int64_t* v_strides, const int64_t* out_strides,
                                    float scale, int threads) {
  return run(q, k, v, out, batch, heads, length, dim, q_strides, k_strides, v_strides, out_strides, scale, threads);
}

// The C shim of the custom op `siglip::siglip_attention(Tensor q, Tensor k, Tensor v, float scale, int threads)
// -> Tensor` that AOTInductor's generated code calls: q, k and v (batch, heads, positions, head size), bf16 or
// float32, the result in their dtype, laid out as (batch, positions, heads, head size) as the Python op returns
// it. Declared here from torch's C shim (torch/csrc/inductor/aoti_torch/c/shim.h, an ABI torch keeps stable);
// libtorch provides them.
extern "C" {
struct AtenTensorOpaque;
using AtenTensorHandle = AtenTensorOpaque*;
int32_t aoti_torch_get_data_ptr(AtenTensorHandle tensor, void** data);
int32_t aoti_torch_get_sizes(AtenTensorHandle tensor, int64_t** sizes);
int32_t aoti_torch_get_strides(AtenTensorHandle tensor, int64_t** strides);
int32_t aoti_torch_get_dtype(AtenTensorHandle tensor, int32_t* dtype);
int32_t aoti_torch_empty_strided(int64_t ndim, const int64_t* sizes, const int64_t* strides, int32_t dtype,
                                 int32_t device_type, int32_t device_index, AtenTensorHandle* result);
int32_t aoti_torch_dtype_bfloat16();
int32_t aoti_torch_dtype_float32();
int32_t aoti_torch_device_type_cpu();

int32_t aoti_torch_cpu_siglip_attention(AtenTensorHandle q, AtenTensorHandle k, AtenTensorHandle v, double scale64,
                                        int64_t threads64, AtenTensorHandle* result) {
  const float scale = (float)scale64;  // as the kernel takes them, checked before the result is allocated
  const int threads = threads64 > INT_MAX ? 0 : (int)threads64;
  void *qd, *kd, *vd, *od;
  int64_t *sizes, *k_sizes, *v_sizes, *qs, *ks, *vs;
  int32_t dtype, k_dtype, v_dtype;
  if (aoti_torch_get_sizes(q, &sizes) || aoti_torch_get_sizes(k, &k_sizes) || aoti_torch_get_sizes(v, &v_sizes) ||
      aoti_torch_get_dtype(q, &dtype) || aoti_torch_get_dtype(k, &k_dtype) || aoti_torch_get_dtype(v, &v_dtype) ||
      aoti_torch_get_strides(q, &qs) || aoti_torch_get_strides(k, &ks) || aoti_torch_get_strides(v, &vs) ||
      aoti_torch_get_data_ptr(q, &qd) || aoti_torch_get_data_ptr(k, &kd) || aoti_torch_get_data_ptr(v, &vd))
    return 1;
  const bool bf16_inputs = dtype == aoti_torch_dtype_bfloat16();
  if ((!bf16_inputs && dtype != aoti_torch_dtype_float32()) || k_dtype != dtype || v_dtype != dtype ||
      !std::equal(sizes, sizes + 4, k_sizes) || !std::equal(sizes, sizes + 4, v_sizes) || qs[3] != 1 || ks[3] != 1 ||
      vs[3] != 1 || refused(sizes[3], ks[2], scale, threads))
    return 1;  // checked before the result is allocated: nothing to free
  const int64_t b = sizes[0], h = sizes[1], l = sizes[2], d = sizes[3];
  const int64_t out_strides[4] = {l * h * d, d, h * d, 1};
  if (aoti_torch_empty_strided(4, sizes, out_strides, dtype, aoti_torch_device_type_cpu(), 0, result) ||
      aoti_torch_get_data_ptr(*result, &od))
    return 1;
  if (bf16_inputs)
    return siglip_attention_bf16((const bf16*)qd, (const bf16*)kd, (const bf16*)vd, (bf16*)od, b, h, l, d, qs, ks, vs,
                                 out_strides, scale, threads);
  return siglip_attention_f32((const float*)qd, (const float*)kd, (const float*)vd, (float*)od, b, h, l, d, qs, ks,
                              vs, out_strides, scale, threads);
}
}

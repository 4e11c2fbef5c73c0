// siglip's per-call activation quantisation for eager int8 (AVX2), built on first use by
// `siglip.tools.embeddings.native` and called through ctypes by `siglip.tools.embeddings.int8.quantized`.
//
// One float32 or bf16 tensor of n values to uint8 with one scale and zero point (asymmetric, per tensor): two
// passes over the input, each split over the threads: its range, then the quantised values. torch's own path
// (aminmax, then quantize_per_tensor and int_repr) read the input twice and wrote two tensors, 4x the time.
//
//   lo = min(min x, 0), hi = max(max x, 0), scale = max((hi - lo) / qmax, 2^-23) (float32),
//   zero_point = clamp(nearbyint(-lo / scale), 0, qmax), q = clamp(nearbyint(x * (1 / scale)) + zero_point,
//   0, qmax), rounding to nearest, ties to even. qmax: 255, or 127 where the int8 products add pairs of
//   products in 16 bits (no VNNI).

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t kSerialBelow = 1 << 15;  // fewer values than this: one thread (a team costs more)
constexpr float kMinScale = 1.1920928955078125e-07f;  // 2^-23, torch's smallest quantisation scale

// [begin, end) of thread `t` of `threads`: slices of whole 32-value vectors, the remainder in the last
void slice(int64_t n, int t, int threads, int64_t* begin, int64_t* end) {
    int64_t per = (n + threads - 1) / threads;
    per = (per + 31) / 32 * 32;
    *begin = std::min(n, per * t);
    *end = std::min(n, *begin + per);
}

// 8 values as float32 (a bf16 value is the upper half of its float32)
inline __m256 load8(const float* x) { return _mm256_loadu_ps(x); }
inline __m256 load8(const uint16_t* x) {
    __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16));
}
inline float value(float x) { return x; }
inline float value(uint16_t x) {
    uint32_t bits = static_cast<uint32_t>(x) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

template <typename T>
int quantize(const T* x, int64_t n, uint8_t* out, int qmax, int threads, float* scale_out,
             int32_t* zero_point_out) {
    if (qmax != 127 && qmax != 255) return 1;
    threads = n < kSerialBelow ? 1 : std::max(threads, 1);
    float lo = 0.f, hi = 0.f;
    int bad = 0;
#pragma omp parallel num_threads(threads) reduction(min : lo) reduction(max : hi) reduction(| : bad)
    {
        int64_t begin, end;
        slice(n, omp_get_thread_num(), omp_get_num_threads(), &begin, &end);
        __m256 low = _mm256_setzero_ps(), high = _mm256_setzero_ps(), unordered = _mm256_setzero_ps();
        int64_t i = begin;
        for (; i + 8 <= end; i += 8) {
            __m256 v = load8(x + i);
            low = _mm256_min_ps(low, v);
            high = _mm256_max_ps(high, v);
            unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));  // NaN
        }
        float lows[8], highs[8];
        _mm256_storeu_ps(lows, low);
        _mm256_storeu_ps(highs, high);
        for (int j = 0; j < 8; j++) {
            lo = std::min(lo, lows[j]);
            hi = std::max(hi, highs[j]);
        }
        bad |= _mm256_movemask_ps(unordered) != 0;
        for (; i < end; i++) {
            float v = value(x[i]);
            bad |= std::isnan(v);
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
    }
    if (bad || !std::isfinite(lo) || !std::isfinite(hi)) return 1;
    const float scale = std::max((hi - lo) / static_cast<float>(qmax), kMinScale);
    if (!std::isfinite(scale)) return 1;  // a range wider than float32's
    const int zero_point = std::min(std::max(static_cast<int>(std::nearbyint(-lo / scale)), 0), qmax);
    const float inverse = 1.f / scale;
#pragma omp parallel num_threads(threads)
    {
        int64_t begin, end;
        slice(n, omp_get_thread_num(), omp_get_num_threads(), &begin, &end);
        const __m256 times = _mm256_set1_ps(inverse);
        const __m256i plus = _mm256_set1_epi32(zero_point);
        const __m256i most = _mm256_set1_epi8(static_cast<char>(qmax));
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the packs' lane order
        int64_t i = begin;
        for (; i + 32 <= end; i += 32) {
            __m256i q[4];
            for (int j = 0; j < 4; j++) {  // rounded to nearest, ties to even (the default MXCSR mode)
                __m256 scaled = _mm256_mul_ps(load8(x + i + 8 * j), times);
                q[j] = _mm256_add_epi32(_mm256_cvtps_epi32(scaled), plus);
            }
            // int32 -> int16 -> uint8, saturating: below 0 to 0, above 255 to 255; then qmax
            __m256i bytes =
                _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            bytes = _mm256_min_epu8(_mm256_permutevar8x32_epi32(bytes, order), most);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), bytes);
        }
        for (; i < end; i++) {
            int q = static_cast<int>(std::nearbyint(value(x[i]) * inverse)) + zero_point;
            out[i] = static_cast<uint8_t>(std::min(std::max(q, 0), qmax));
        }
    }
    *scale_out = scale;
    *zero_point_out = zero_point;
    return 0;
}

}  // namespace

// Quantise x[0..n) (float32, or bf16 in `siglip_quantize_u8_bf16`) into out[0..n); writes the scale and zero
// point. Returns 0, or 1 (nothing written) when x holds a NaN or an infinity, its range overflows float32, or
// qmax is not 127 or 255.
extern "C" int siglip_quantize_u8(const float* x, int64_t n, uint8_t* out, int qmax, int threads,
                                  float* scale_out, int32_t* zero_point_out) {
    return quantize(x, n, out, qmax, threads, scale_out, zero_point_out);
}

extern "C" int siglip_quantize_u8_bf16(const uint16_t* x, int64_t n, uint8_t* out, int qmax, int threads,
                                       float* scale_out, int32_t* zero_point_out) {
    return quantize(x, n, out, qmax, threads, scale_out, zero_point_out);
}

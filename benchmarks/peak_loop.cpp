// The instruction peak of this CPU's vector units, per precision: each thread runs independent chains of the
// multiply-add instruction a matrix product's inner loop is made of, with no memory traffic, and the rates
// add up. Built by benchmarks/bench_peak.py with the machine's compiler (-march=native), which picks the
// widest instructions the CPU has:
//
//   fp32: FMA (AVX-512 or AVX2), 2 operations a lane;
//   bf16: AVX-512 BF16's dot product (vdpbf16ps: 2 products a float32 lane, 4 operations); without it, none;
//   int8: VNNI's u8 x s8 dot product (vpdpbusd: 4 products a 32-bit lane, 8 operations; AVX-512 or AVX-VNNI),
//         else AVX2's vpmaddubsw + vpmaddwd + vpaddd (what oneDNN runs without VNNI: the same 32 products per
//         256 bits in three instructions).
//
// AMX's tiles are not measured here: a CPU with them reaches several times the bf16 and int8 figures.
//
// usage: peak_loop fp32|bf16|int8 THREADS ITERATIONS -> prints the operations per second, or "none".

#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

constexpr int kChains = 16;  // independent accumulators: enough to cover each unit's latency x its pipes

template <typename Vec, typename Step>
double run(long iterations, int threads, double ops_per_step, Vec start, Step step) {
    double seconds = 0;
    volatile float sink = 0;
#pragma omp parallel num_threads(threads)
    {
        Vec acc[kChains];
        for (auto& a : acc) a = start;
#pragma omp barrier
        auto begin = std::chrono::steady_clock::now();
        for (long i = 0; i < iterations; i++) {
#pragma GCC unroll 16
            for (int j = 0; j < kChains; j++) acc[j] = step(acc[j]);
        }
        double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
        float lane;
        std::memcpy(&lane, &acc[iterations % kChains], sizeof lane);  // keeps the chains alive
#pragma omp critical
        {
            seconds = seconds > took ? seconds : took;  // the slowest thread: all ran at once
            sink = sink + lane;
        }
    }
    return ops_per_step * kChains * iterations * threads / seconds;
}

double peak(const char* kind, int threads, long iterations) {
    if (!std::strcmp(kind, "fp32")) {
#ifdef __AVX512F__
        const __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f);
        return run(iterations, threads, 32, _mm512_set1_ps(1.f), [&](__m512 a) { return _mm512_fmadd_ps(a, b, c); });
#else
        const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-3f);
        return run(iterations, threads, 16, _mm256_set1_ps(1.f), [&](__m256 a) { return _mm256_fmadd_ps(a, b, c); });
#endif
    }
    if (!std::strcmp(kind, "bf16")) {
#ifdef __AVX512BF16__
        const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = b;  // bf16 ones
        return run(iterations, threads, 64, _mm512_setzero_ps(), [&](__m512 a) { return _mm512_dpbf16_ps(a, b, c); });
#else
        return -1;
#endif
    }
    if (!std::strcmp(kind, "int8")) {
#if defined(__AVX512VNNI__)
        const __m512i b = _mm512_set1_epi8(1), c = _mm512_set1_epi8(2);
        return run(iterations, threads, 128, _mm512_setzero_si512(),
                   [&](__m512i a) { return _mm512_dpbusd_epi32(a, b, c); });
#elif defined(__AVXVNNI__)
        const __m256i b = _mm256_set1_epi8(1), c = _mm256_set1_epi8(2);
        return run(iterations, threads, 64, _mm256_setzero_si256(),
                   [&](__m256i a) { return _mm256_dpbusd_avx_epi32(a, b, c); });
#else
        const __m256i b = _mm256_set1_epi8(1), c = _mm256_set1_epi8(2), ones = _mm256_set1_epi16(1);
        return run(iterations, threads, 64, _mm256_setzero_si256(), [&](__m256i a) {
            __m256i x = b;
            __asm__ volatile("" : "+x"(x));  // the products would otherwise be computed once, outside the loop
            return _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_maddubs_epi16(x, c), ones));
        });
#endif
    }
    return -2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s fp32|bf16|int8 THREADS ITERATIONS\n", argv[0]);
        return 2;
    }
    double rate = peak(argv[1], std::atoi(argv[2]), std::atol(argv[3]));
    if (rate == -2) {
        std::fprintf(stderr, "unknown precision %s\n", argv[1]);
        return 2;
    }
    if (rate < 0)
        std::printf("none\n");
    else
        std::printf("%.6g\n", rate);
    return 0;
}

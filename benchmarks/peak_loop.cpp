// The instruction peak of this CPU's vector units, per precision: each thread runs independent chains of the
// multiply-add instruction a matrix product's inner loop is made of, with no memory traffic, and the rates
// add up. Built by benchmarks/bench_peak.py with the machine's compiler (-march=native), which picks the
// widest instructions the CPU has:
//
//   fp32: FMA (AVX-512 or AVX2), 2 operations a lane;
//   bf16: AVX-512 BF16's dot product (vdpbf16ps: 2 products a float32 lane, 4 operations); without it, none;
//   int8: VNNI's u8 x s8 dot product (vpdpbusd: 4 products a 32-bit lane, 8 operations; AVX-512 or AVX-VNNI),
//         else vpmaddubsw + vpmaddwd + vpaddd (what oneDNN runs without VNNI: the same products in three
//         instructions; on 512 bits with AVX-512, 256 with AVX2).
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

inline __m256 sum(__m256 x, __m256 y) { return _mm256_add_ps(x, y); }
inline __m256i sum(__m256i x, __m256i y) { return _mm256_add_epi32(x, y); }
#ifdef __AVX512F__
inline __m512 sum(__m512 x, __m512 y) { return _mm512_add_ps(x, y); }
inline __m512i sum(__m512i x, __m512i y) { return _mm512_add_epi32(x, y); }
#endif

// `Chains` independent accumulators, enough to cover each unit's latency times its pipes while every chain
// and constant stays in a register (32 with AVX-512, 16 without: a chain kept in memory would read low).
template <int Chains, typename Vec, typename Step>
double run(long iterations, int threads, double ops_per_step, Vec (*seed)(int), Step step) {
    double seconds = 0;
    volatile float sink = 0;
#pragma omp parallel num_threads(threads)
    {
        Vec acc[Chains];
        for (int j = 0; j < Chains; j++) acc[j] = seed(j);  // each its own value: no two chains the same
#pragma omp barrier
        auto begin = std::chrono::steady_clock::now();
        for (long i = 0; i < iterations; i++) {
#pragma GCC unroll 16
            for (int j = 0; j < Chains; j++) acc[j] = step(acc[j]);
        }
        double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
        Vec all = acc[0];
        for (int j = 1; j < Chains; j++) all = sum(all, acc[j]);  // every chain's result is used
        float lane;
        std::memcpy(&lane, &all, sizeof lane);
#pragma omp critical
        {
            seconds = seconds > took ? seconds : took;  // the slowest thread: all ran at once
            sink = sink + lane;
        }
    }
    return ops_per_step * Chains * iterations * threads / seconds;
}

// int8 without VNNI, as oneDNN runs it there: u8 x s8 products summed in pairs to 16 bits (vpmaddubsw), in
// pairs again to 32 bits (vpmaddwd by ones), then accumulated (vpaddd)
inline __m256i pair_sums(__m256i x, __m256i c) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, c), _mm256_set1_epi16(1));
}
#ifdef __AVX512BW__
inline __m512i pair_sums(__m512i x, __m512i c) {
    return _mm512_madd_epi16(_mm512_maddubs_epi16(x, c), _mm512_set1_epi16(1));
}
#endif

template <int Chains, typename Vec>
double three_instructions(long iterations, int threads, double ops_per_step, Vec b, Vec c, Vec (*seed)(int)) {
    return run<Chains>(iterations, threads, ops_per_step, seed, [&](Vec a) {
        Vec x = b;
        __asm__ volatile("" : "+v"(x));  // the products would otherwise be computed once, outside the loop
        return sum(a, pair_sums(x, c));
    });
}

double peak(const char* kind, int threads, long iterations) {
    if (!std::strcmp(kind, "fp32")) {
#ifdef __AVX512F__
        const __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f);
        return run<16>(
            iterations, threads, 32, +[](int j) { return _mm512_set1_ps(1.f + j); },
            [&](__m512 a) { return _mm512_fmadd_ps(a, b, c); });
#else
        const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-3f);
        return run<12>(
            iterations, threads, 16, +[](int j) { return _mm256_set1_ps(1.f + j); },
            [&](__m256 a) { return _mm256_fmadd_ps(a, b, c); });
#endif
    }
    if (!std::strcmp(kind, "bf16")) {
#ifdef __AVX512BF16__
        const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = b;  // bf16 ones
        return run<16>(
            iterations, threads, 64, +[](int j) { return _mm512_set1_ps(static_cast<float>(j)); },
            [&](__m512 a) { return _mm512_dpbf16_ps(a, b, c); });
#else
        return -1;
#endif
    }
    if (!std::strcmp(kind, "int8")) {
#if defined(__AVX512VNNI__)
        const __m512i b = _mm512_set1_epi8(1), c = _mm512_set1_epi8(2);
        return run<16>(
            iterations, threads, 128, +[](int j) { return _mm512_set1_epi32(j); },
            [&](__m512i a) { return _mm512_dpbusd_epi32(a, b, c); });
#elif defined(__AVXVNNI__)
        const __m256i b = _mm256_set1_epi8(1), c = _mm256_set1_epi8(2);
        return run<12>(
            iterations, threads, 64, +[](int j) { return _mm256_set1_epi32(j); },
            [&](__m256i a) { return _mm256_dpbusd_avx_epi32(a, b, c); });
#elif defined(__AVX512BW__)  // AVX-512 without VNNI (Skylake-SP): the three instructions on 512 bits
        return three_instructions<8>(
            iterations, threads, 128, _mm512_set1_epi8(1), _mm512_set1_epi8(2),
            +[](int j) { return _mm512_set1_epi32(j); });
#else
        return three_instructions<6>(
            iterations, threads, 64, _mm256_set1_epi8(1), _mm256_set1_epi8(2),
            +[](int j) { return _mm256_set1_epi32(j); });
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

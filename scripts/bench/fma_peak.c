// Peak f32 FMA throughput: 12 independent 8-lane FMA chains per thread, 1..N OpenMP threads.
// Build and run:
//   gcc -O2 -mavx2 -mfma -fopenmp scripts/bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak [threads,...]
// Prints the best of 5 passes for each thread count, in GFLOP/s (an FMA is 2 FLOP). This is the
// ceiling for prefill with float (f32, f16, bf16) weights, which AVX2 multiplies in f32: on
// 2026-11-28 it read about 100 GFLOP/s per core here, 200 with both.
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ITERS 50000000L

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// 12 chains hide the FMA latency (4-5 cycles) at 2 FMAs per cycle; the empty asm keeps the
// accumulators in registers and the loop from being folded away.
static float chains(void) {
    __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.001f);
    __m256 a0 = _mm256_set1_ps(1), a1 = _mm256_set1_ps(2), a2 = _mm256_set1_ps(3), a3 = _mm256_set1_ps(4);
    __m256 a4 = _mm256_set1_ps(5), a5 = _mm256_set1_ps(6), a6 = _mm256_set1_ps(7), a7 = _mm256_set1_ps(8);
    __m256 a8 = _mm256_set1_ps(9), a9 = _mm256_set1_ps(10), a10 = _mm256_set1_ps(11), a11 = _mm256_set1_ps(12);
    for (long n = 0; n < ITERS; n++) {
        a0 = _mm256_fmadd_ps(a0, b, c); a1 = _mm256_fmadd_ps(a1, b, c); a2 = _mm256_fmadd_ps(a2, b, c);
        a3 = _mm256_fmadd_ps(a3, b, c); a4 = _mm256_fmadd_ps(a4, b, c); a5 = _mm256_fmadd_ps(a5, b, c);
        a6 = _mm256_fmadd_ps(a6, b, c); a7 = _mm256_fmadd_ps(a7, b, c); a8 = _mm256_fmadd_ps(a8, b, c);
        a9 = _mm256_fmadd_ps(a9, b, c); a10 = _mm256_fmadd_ps(a10, b, c); a11 = _mm256_fmadd_ps(a11, b, c);
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5), "+x"(a6), "+x"(a7),
                         "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0];
}

int main(int argc, char **argv) {
    const char *list = argc > 1 ? argv[1] : "1,2";
    char *copy = strdup(list);
    volatile float sink = 0;
    for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
        int threads = atoi(tok);
        double best = 0;
        for (int rep = 0; rep < 5; rep++) {
            double t0 = now();
#pragma omp parallel num_threads(threads)
            {
                float r = chains();
#pragma omp atomic
                sink += r;
            }
            double gflops = threads * ITERS * 12.0 * 16.0 / (now() - t0) / 1e9;
            if (gflops > best) best = gflops;
        }
        printf("fma peak, %d thread(s): %.1f GFLOP/s\n", threads, best);
    }
    free(copy);
    return sink == 12345.0f;
}

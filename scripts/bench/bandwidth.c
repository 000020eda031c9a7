// Streaming read bandwidth: AVX2 loads over a large buffer with 1..N OpenMP threads.
// Build and run (offline_compare.py does this for you):
//   gcc -O3 -mavx2 -fopenmp scripts/bench/bandwidth.c -o /tmp/bandwidth && /tmp/bandwidth [MiB] [reps] [threads,...]
// Prints the best of `reps` passes for each thread count, in GB/s (1e9 bytes/s). This is the
// ceiling for batch-1 decode, which streams every weight once per token.
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    const char *list = argc > 3 ? argv[3] : "1,2";
    size_t n = mib * 1024 * 1024 / sizeof(__m256i);
    n -= n % 8;
    __m256i *buf = aligned_alloc(64, n * sizeof(__m256i));
    if (!buf) {
        fprintf(stderr, "cannot allocate %zu MiB\n", mib);
        return 1;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = _mm256_set1_epi64x((long long)i);

    char *spec = strdup(list);
    for (char *tok = strtok(spec, ","); tok; tok = strtok(NULL, ",")) {
        int threads = atoi(tok);
        if (threads < 1) continue;
        double best = 1e30;
        long long sink = 0;
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            long long total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
            {
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
#pragma omp for schedule(static)
                for (size_t i = 0; i < n; i += 8) {
                    a0 = _mm256_xor_si256(a0, _mm256_load_si256(buf + i));
                    a1 = _mm256_xor_si256(a1, _mm256_load_si256(buf + i + 1));
                    a2 = _mm256_xor_si256(a2, _mm256_load_si256(buf + i + 2));
                    a3 = _mm256_xor_si256(a3, _mm256_load_si256(buf + i + 3));
                    a0 = _mm256_xor_si256(a0, _mm256_load_si256(buf + i + 4));
                    a1 = _mm256_xor_si256(a1, _mm256_load_si256(buf + i + 5));
                    a2 = _mm256_xor_si256(a2, _mm256_load_si256(buf + i + 6));
                    a3 = _mm256_xor_si256(a3, _mm256_load_si256(buf + i + 7));
                }
                __m256i x = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
                total += _mm256_extract_epi64(x, 0) ^ _mm256_extract_epi64(x, 3);
            }
            double dt = now() - t0;
            sink ^= total;
            if (dt < best) best = dt;
        }
        double gb = (double)n * sizeof(__m256i) / 1e9;
        printf("read bandwidth, %d thread%s: %.2f GB/s (best of %d passes over %zu MiB; sink %lld)\n", threads,
               threads == 1 ? "" : "s", gb / best, reps, mib, sink & 1);
    }
    free(spec);
    free(buf);
    return 0;
}

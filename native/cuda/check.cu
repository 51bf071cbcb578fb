// check.cu -- builds with native/cuda/check.sh on a GPU machine: rs_cuda_sparse_matvec against a float64 host
// reference (every weight type, kept fractions 0..100%, rank 0 and > 0, odd and Llama-7B shapes), then its time
// against the GPU's measured memory bandwidth (a device-to-device copy) on Llama-7B and SmolLM2 layer shapes.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "rsparse.h"
#include "rsparse_cuda.h"

#define CUDA_OK(call)                                                                                  \
    do {                                                                                               \
        cudaError_t e_ = (call);                                                                       \
        if (e_ != cudaSuccess) {                                                                       \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));           \
            std::exit(2);                                                                              \
        }                                                                                              \
    } while (0)

static std::mt19937_64 rng(12345);
static float uni(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }

static uint16_t to_half(float f) { __half h = __float2half(f); uint16_t u; std::memcpy(&u, &h, 2); return u; }
static double from_half(uint16_t u) { __half h; std::memcpy(&h, &u, 2); return (double)__half2float(h); }

static int64_t row_bytes(int type, int64_t n)
{
    return type == RS_TYPE_F32 ? 4 * n : type == RS_TYPE_F16 ? 2 * n : type == RS_TYPE_Q8_0 ? n / 32 * 34 : n / 32 * 18;
}

static const char *type_name(int t)
{
    return t == RS_TYPE_F32 ? "F32" : t == RS_TYPE_F16 ? "F16" : t == RS_TYPE_Q8_0 ? "Q8_0" : "Q4_0";
}

// Random valid weights: n_rows rows of n elements.
static std::vector<uint8_t> make_weights(int type, int64_t n_rows, int64_t n)
{
    const int64_t rb = row_bytes(type, n);
    std::vector<uint8_t> w((size_t)(n_rows * rb));
    for (int64_t r = 0; r < n_rows; r++) {
        uint8_t *row = w.data() + r * rb;
        if (type == RS_TYPE_F32 || type == RS_TYPE_F16) {
            for (int64_t i = 0; i < n; i++) {
                const float f = uni(-1, 1);
                if (type == RS_TYPE_F32) std::memcpy(row + 4 * i, &f, 4);
                else { uint16_t h = to_half(f); std::memcpy(row + 2 * i, &h, 2); }
            }
        } else {
            const int64_t bb = type == RS_TYPE_Q8_0 ? 34 : 18;
            for (int64_t k = 0; k < n / 32; k++) {
                uint8_t *b = row + k * bb;
                const uint16_t d = to_half(uni(-0.05f, 0.05f));
                std::memcpy(b, &d, 2);
                for (int64_t j = 2; j < bb; j++) b[j] = (uint8_t)(rng() & 0xFF);
            }
        }
    }
    return w;
}

static double element(int type, const uint8_t *row, int64_t i)
{
    uint16_t h;
    switch (type) {
    case RS_TYPE_F32: { float f; std::memcpy(&f, row + 4 * i, 4); return f; }
    case RS_TYPE_F16: std::memcpy(&h, row + 2 * i, 2); return from_half(h);
    case RS_TYPE_Q8_0: { const uint8_t *b = row + 34 * (i / 32); std::memcpy(&h, b, 2);
                         return from_half(h) * (int8_t)b[2 + i % 32]; }
    default: { const uint8_t *b = row + 18 * (i / 32); std::memcpy(&h, b, 2); const int j = (int)(i % 32);
               return from_half(h) * ((j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4)) - 8); }
    }
}

template <class T> static T *to_device(const std::vector<T> &v)
{
    T *p = nullptr;
    CUDA_OK(cudaMalloc(&p, std::max<size_t>(1, v.size() * sizeof(T))));
    if (!v.empty()) CUDA_OK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return p;
}

struct Layer {
    int type, ftype;
    int64_t n_out, n_in, rank;
    std::vector<uint8_t> wt, u, vs;
    std::vector<float> x, colnorm;
    uint8_t *d_wt, *d_u, *d_vs;
    float *d_x, *d_cn, *d_y;
    void *d_scratch;
    int64_t scratch_bytes;
};

static Layer make_layer(int type, int ftype, int64_t n_out, int64_t n_in, int64_t rank)
{
    Layer L{type, ftype, n_out, n_in, rank};
    L.wt = make_weights(type, n_in, n_out);
    L.u = make_weights(ftype, n_out, rank ? rank : 1);
    L.vs = make_weights(ftype, rank ? rank : 1, n_in);
    for (int64_t i = 0; i < n_in; i++) { L.x.push_back(uni(-2, 2)); L.colnorm.push_back(uni(0.1f, 3)); }
    L.d_wt = to_device(L.wt); L.d_u = to_device(L.u); L.d_vs = to_device(L.vs);
    L.d_x = to_device(L.x); L.d_cn = to_device(L.colnorm);
    CUDA_OK(cudaMalloc(&L.d_y, n_out * sizeof(float)));
    L.scratch_bytes = rs_cuda_scratch_bytes(n_out, n_in, rank);
    CUDA_OK(cudaMalloc(&L.d_scratch, L.scratch_bytes));
    return L;
}

static void free_layer(Layer &L)
{
    cudaFree(L.d_wt); cudaFree(L.d_u); cudaFree(L.d_vs); cudaFree(L.d_x); cudaFree(L.d_cn); cudaFree(L.d_y);
    cudaFree(L.d_scratch);
}

// tau keeping exactly n_keep channels (scores are distinct random floats)
static float tau_for(const Layer &L, bool cn, int64_t n_keep)
{
    std::vector<float> s;
    for (int64_t j = 0; j < L.n_in; j++) s.push_back(cn ? std::fabs(L.x[j]) * L.colnorm[j] : std::fabs(L.x[j]));
    std::sort(s.begin(), s.end());
    if (n_keep >= L.n_in) return -1.0f;
    if (n_keep == 0) return s.back() + 1.0f;
    return s[L.n_in - n_keep - 1] + (s[L.n_in - n_keep] - s[L.n_in - n_keep - 1]) / 2;
}

static int failures = 0, checks = 0;

static void check(Layer &L, bool cn, int64_t n_keep)
{
    const float tau = tau_for(L, cn, n_keep);
    int64_t kept = -1;
    const int st = rs_cuda_sparse_matvec(L.type, L.d_wt, L.n_out, L.n_in, cn ? L.d_cn : nullptr, tau, L.ftype, L.d_u,
                                         L.d_vs, L.rank, L.d_x, L.d_y, &kept, L.d_scratch, L.scratch_bytes, nullptr);
    std::vector<float> y(L.n_out);
    CUDA_OK(cudaMemcpy(y.data(), L.d_y, L.n_out * sizeof(float), cudaMemcpyDeviceToHost));
    checks++;
    bool ok = st == RS_OK && kept == n_keep;
    std::vector<char> m(L.n_in);
    for (int64_t j = 0; j < L.n_in; j++) m[j] = (cn ? std::fabs(L.x[j]) * L.colnorm[j] : std::fabs(L.x[j])) > tau;
    std::vector<double> z(L.rank), zmag(L.rank);
    const int64_t rb = row_bytes(L.type, L.n_out), fb_vs = row_bytes(L.ftype, L.n_in), fb_u = row_bytes(L.ftype, L.rank);
    for (int64_t r = 0; r < L.rank; r++)
        for (int64_t j = 0; j < L.n_in; j++)
            if (!m[j]) { const double p = element(L.ftype, L.vs.data() + r * fb_vs, j) * L.x[j]; z[r] += p; zmag[r] += std::fabs(p); }
    double worst = 0;
    for (int64_t o = 0; o < L.n_out; o++) {
        double want = 0, mag = 0;
        for (int64_t j = 0; j < L.n_in; j++)
            if (m[j]) { const double p = element(L.type, L.wt.data() + j * rb, o) * L.x[j]; want += p; mag += std::fabs(p); }
        for (int64_t r = 0; r < L.rank; r++) {
            const double uo = element(L.ftype, L.u.data() + o * fb_u, r);
            want += uo * z[r]; mag += std::fabs(uo) * zmag[r];
        }
        const double err = std::fabs(y[o] - want) / (1e-5 * mag + 1e-30);
        worst = std::max(worst, err);
        if (!(err <= 1.0)) ok = false;
    }
    if (!ok) {
        failures++;
        std::printf("FAIL %s %lldx%lld rank %lld %s kept %lld (want %lld) status %d worst err/bound %.3g\n",
                    type_name(L.type), (long long)L.n_out, (long long)L.n_in, (long long)L.rank,
                    cn ? "colnorm" : "rho=1", (long long)kept, (long long)n_keep, st, worst);
    }
}

int main()
{
    int dev = 0;
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, dev));
    std::printf("device: %s, %d SMs, %.0f GiB\n", prop.name, prop.multiProcessorCount,
                prop.totalGlobalMem / 1073741824.0);

    // ---- correctness: every type, odd and real shapes, fractions 0..100%, rank 0 and > 0, both score modes ----
    const int types[] = {RS_TYPE_F32, RS_TYPE_F16, RS_TYPE_Q4_0, RS_TYPE_Q8_0};
    const int percents[] = {0, 10, 50, 90, 100};
    for (int t : types) {
        const bool q = t == RS_TYPE_Q4_0 || t == RS_TYPE_Q8_0;
        const int64_t shapes[][2] = {{q ? 32 : 37, 45}, {q ? 96 : 131, 67}, {576, 1536}, {1536, 576}};
        for (auto &s : shapes)
            for (int64_t rank : {0, 8}) {
                Layer L = make_layer(t, rank % 16 ? RS_TYPE_F32 : RS_TYPE_F16, s[0], s[1], rank);
                for (int p : percents)
                    for (bool cn : {false, true}) check(L, cn, s[1] * p / 100);
                free_layer(L);
            }
    }
    for (int t : {RS_TYPE_F16, RS_TYPE_Q8_0}) {
        Layer L = make_layer(t, RS_TYPE_F16, 4096, 4096, 32);
        check(L, false, 2048);
        free_layer(L);
    }
    std::printf("correctness: %d checks, %d failures\n", checks, failures);

    // ---- bandwidth: a device-to-device copy of 2 GiB (read + write) ----
    const size_t nb = (size_t)1 << 31;
    void *a, *b;
    CUDA_OK(cudaMalloc(&a, nb)); CUDA_OK(cudaMalloc(&b, nb));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0); cudaEventCreate(&e1);
    float best = 1e30f;
    for (int r = 0; r < 10; r++) {
        cudaEventRecord(e0);
        CUDA_OK(cudaMemcpyAsync(b, a, nb, cudaMemcpyDeviceToDevice));
        cudaEventRecord(e1); cudaEventSynchronize(e1);
        float ms; cudaEventElapsedTime(&ms, e0, e1); best = std::min(best, ms);
    }
    const double bw = 2.0 * nb / (best * 1e-3);
    cudaFree(a); cudaFree(b);
    std::printf("memory bandwidth (device copy, read + write): %.0f GB/s\n\n", bw / 1e9);

    // ---- timing: rank 0, rho = 1; GB/s counts the kept rows' bytes ----
    std::printf("%-5s %-12s %8s %8s %8s %8s %8s   (us, GB/s of kept weights, %% of copy bandwidth)\n", "type",
                "n_out x n_in", "100%", "90%", "50%", "30%", "10%");
    const int64_t tshapes[][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {576, 1536}};
    for (int t : {RS_TYPE_F16, RS_TYPE_Q8_0, RS_TYPE_Q4_0})
        for (auto &s : tshapes) {
            Layer L = make_layer(t, RS_TYPE_F16, s[0], s[1], 0);
            std::printf("%-5s %5lldx%-6lld", type_name(t), (long long)s[0], (long long)s[1]);
            for (int p : {100, 90, 50, 30, 10}) {
                const int64_t keep = s[1] * p / 100;
                const float tau = tau_for(L, false, keep);
                const int iters = 200;
                for (int w = 0; w < 10; w++)
                    rs_cuda_sparse_matvec(t, L.d_wt, L.n_out, L.n_in, nullptr, tau, 0, nullptr, nullptr, 0, L.d_x,
                                          L.d_y, nullptr, L.d_scratch, L.scratch_bytes, nullptr);
                cudaEventRecord(e0);
                for (int i = 0; i < iters; i++)
                    rs_cuda_sparse_matvec(t, L.d_wt, L.n_out, L.n_in, nullptr, tau, 0, nullptr, nullptr, 0, L.d_x,
                                          L.d_y, nullptr, L.d_scratch, L.scratch_bytes, nullptr);
                cudaEventRecord(e1); cudaEventSynchronize(e1);
                float ms; cudaEventElapsedTime(&ms, e0, e1);
                const double us = ms * 1e3 / iters, bytes = (double)keep * row_bytes(t, s[0]);
                std::printf(" %6.1f us %5.0f GB/s %3.0f%%", us, bytes / (us * 1e-6) / 1e9, 100 * bytes / (us * 1e-6) / bw);
            }
            std::printf("\n");
            free_layer(L);
        }
    CUDA_OK(cudaGetLastError());
    std::printf("\n%s\n", failures ? "CUDA CHECK FAILED" : "CUDA check passed");
    return failures ? 1 : 0;
}

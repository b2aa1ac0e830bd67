// Fused random-slice batch assembler; see slice_loader.h for the sampling rule and the RNG.
#include "slice_loader.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <dlfcn.h>
#include <immintrin.h>
#define FEWSHOT_DA_X86 1
#endif

namespace fewshot_da {
namespace {

float half_bits_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    const uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0) {
        // zero or subnormal: mantissa * 2^-24 is exact in float32
        const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
        std::memcpy(&bits, &magnitude, sizeof bits);
        bits |= sign;
    } else if (exponent == 31) {
        bits = sign | 0x7f800000u | (mantissa << 13);  // inf / NaN (payload kept, as NumPy does)
    } else {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    float out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}

void half_to_float_portable(const uint16_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = half_bits_to_float(src[i]);
}

#ifdef FEWSHOT_DA_X86
__attribute__((target("avx,f16c"))) void half_to_float_f16c(const uint16_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; ++i) dst[i] = half_bits_to_float(src[i]);
}

bool cpu_has_f16c() {
    static const bool has = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
    return has;
}

bool cpu_has_avx2_f16c() {
    static const bool has = cpu_has_f16c() && __builtin_cpu_supports("avx2");
    return has;
}

// Streaming (non-temporal) row writers: the batch buffers are written once and read later by someone
// else, so bypassing the cache saves the read-for-ownership of every output line (a third of the
// memory traffic). Scalar head until dst is 32-byte aligned, 8 values per store, scalar tail.
inline int64_t unaligned_head(const float* dst, int64_t n) {
    const int64_t head = static_cast<int64_t>(((32u - (reinterpret_cast<uintptr_t>(dst) & 31u)) & 31u) / 4u);
    return std::min(head, n);
}

__attribute__((target("avx2,f16c"))) void stream_float(const float* src, float* dst, int64_t n) {
    int64_t i = unaligned_head(dst, n);
    for (int64_t j = 0; j < i; ++j) dst[j] = src[j];
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
    for (; i < n; ++i) dst[i] = src[i];
}

__attribute__((target("avx2,f16c"))) void stream_half(const uint16_t* src, float* dst, int64_t n) {
    int64_t i = unaligned_head(dst, n);
    for (int64_t j = 0; j < i; ++j) dst[j] = half_bits_to_float(src[j]);
    for (; i + 8 <= n; i += 8)
        _mm256_stream_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    for (; i < n; ++i) dst[i] = half_bits_to_float(src[i]);
}

__attribute__((target("avx2,f16c"))) void stream_mask(const uint8_t* src, float* dst, int64_t n) {
    int64_t i = unaligned_head(dst, n);
    for (int64_t j = 0; j < i; ++j) dst[j] = static_cast<float>(src[j]);
    for (; i + 8 <= n; i += 8) {
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i));
        _mm256_stream_ps(dst + i, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)));
    }
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// Minimum over n values ignoring NaNs, with *any_nan set when there was one (np.min then returns NaN).
__attribute__((target("avx2,f16c"))) float minimum_avx2(const void* src, ImageDtype dtype, int64_t n,
                                                        bool* any_nan) {
    const float* f32 = static_cast<const float*>(src);
    const uint16_t* f16 = static_cast<const uint16_t*>(src);
    __m256 lo = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    __m256 unordered = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = dtype == ImageDtype::kFloat32
                             ? _mm256_loadu_ps(f32 + i)
                             : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(f16 + i)));
        lo = _mm256_min_ps(v, lo);  // returns the second operand when v is NaN
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, lo);
    float minimum = lanes[0];
    for (int k = 1; k < 8; ++k) minimum = lanes[k] < minimum ? lanes[k] : minimum;
    bool nan = _mm256_movemask_ps(unordered) != 0;
    for (; i < n; ++i) {
        const float v = dtype == ImageDtype::kFloat32 ? f32[i] : half_bits_to_float(f16[i]);
        minimum = v < minimum ? v : minimum;
        nan |= v != v;
    }
    *any_nan = nan;
    return minimum;
}

// Orders the streaming stores before the thread that made them reports completion.
void store_fence() { _mm_sfence(); }
#else
void store_fence() {}
#endif

void mask_to_float(const uint8_t* src, float* dst, int64_t n) {
#ifdef FEWSHOT_DA_X86
    if (cpu_has_avx2_f16c()) {
        stream_mask(src, dst, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// Converts n image values starting at element `offset` of the volume into float32.
void image_to_float(const SliceVolume& v, int64_t offset, float* dst, int64_t n, bool stream = true) {
#ifdef FEWSHOT_DA_X86
    if (stream && cpu_has_avx2_f16c()) {
        if (v.dtype == ImageDtype::kFloat32)
            stream_float(static_cast<const float*>(v.image) + offset, dst, n);
        else
            stream_half(static_cast<const uint16_t*>(v.image) + offset, dst, n);
        return;
    }
#endif
    if (v.dtype == ImageDtype::kFloat32) {
        std::memcpy(dst, static_cast<const float*>(v.image) + offset, static_cast<size_t>(n) * sizeof(float));
    } else {
        half_to_float(static_cast<const uint16_t*>(v.image) + offset, dst, n);
    }
}

// One source pixel of a slice as float (exact for float16).
inline float load_pixel(const SliceVolume& v, const void* slice, int64_t i) {
    return v.dtype == ImageDtype::kFloat32 ? static_cast<const float*>(slice)[i]
                                           : half_bits_to_float(static_cast<const uint16_t*>(slice)[i]);
}

// floor(x) as an integer, for |x| < 2^62.
inline int64_t floor_int(double x) {
    const int64_t i = static_cast<int64_t>(x);
    return i - (static_cast<double>(i) > x);
}

// One output row of the spatial warp: source coordinates (by + m01 dx, bx + m11 dx), dx = c - hx.
struct WarpRow {
    const SliceVolume* v;
    const void* image;  // the slice
    const uint8_t* mask;
    int64_t height, width;
    double pad;  // image value outside the slice (its minimum)
    double by, bx, m01, m11, hx;
    double* row;  // out: bilinear image values
    float* yr;    // out: thresholded mask
};

// Output column c: bilinear image in double, outside neighbours = pad; mask bilinear in double (outside
// 0), >= 0.5 -> 1 (so a tie at exactly 0.5 goes to foreground).
inline void warp_pixel(const WarpRow& w, int64_t c) {
    const double dx = static_cast<double>(c) - w.hx;
    const double sy = w.by + w.m01 * dx, sx = w.bx + w.m11 * dx;
    const int64_t iy = floor_int(sy), ix = floor_int(sx);
    const double wy = sy - static_cast<double>(iy), wx = sx - static_cast<double>(ix);
    const bool y0in = iy >= 0 && iy < w.height, y1in = iy + 1 >= 0 && iy + 1 < w.height;
    const bool x0in = ix >= 0 && ix < w.width, x1in = ix + 1 >= 0 && ix + 1 < w.width;
    if (!(y0in || y1in) || !(x0in || x1in)) {  // the whole neighbourhood is outside
        w.row[c] = w.pad;
        w.yr[c] = 0.0f;
        return;
    }
    const int64_t p = iy * w.width + ix;
    const double v00 = y0in && x0in ? load_pixel(*w.v, w.image, p) : w.pad;
    const double v01 = y0in && x1in ? load_pixel(*w.v, w.image, p + 1) : w.pad;
    const double v10 = y1in && x0in ? load_pixel(*w.v, w.image, p + w.width) : w.pad;
    const double v11 = y1in && x1in ? load_pixel(*w.v, w.image, p + w.width + 1) : w.pad;
    const double m00 = y0in && x0in ? w.mask[p] : 0, m01 = y0in && x1in ? w.mask[p + 1] : 0;
    const double m10 = y1in && x0in ? w.mask[p + w.width] : 0;
    const double m11 = y1in && x1in ? w.mask[p + w.width + 1] : 0;
    w.row[c] = (1.0 - wy) * ((1.0 - wx) * v00 + wx * v01) + wy * ((1.0 - wx) * v10 + wx * v11);
    const double m = (1.0 - wy) * ((1.0 - wx) * m00 + wx * m01) + wy * ((1.0 - wx) * m10 + wx * m11);
    w.yr[c] = m >= 0.5 ? 1.0f : 0.0f;
}

// Gamma on one row in place: v = lo + range * ((v - lo) / range)^g, and lo where the base is not > 0.
void gamma_row(double* row, int64_t n, double lo, double range, double g) {
    for (int64_t c = 0; c < n; ++c) {
        const double base = (row[c] - lo) / range;  // 0 on the background: skip pow there
        row[c] = base > 0 ? lo + range * std::pow(base, g) : lo;
    }
}

#ifdef FEWSHOT_DA_X86
// glibc's libmvec AVX2 powf on 8 floats (within 1 ulp), looked up at run time so that the module has no
// link-time dependency on libmvec; null when missing. The base is formed in double and rounded once, so
// the result is within ~2e-7 relative of pow in double (~2e-7 x the slice range in absolute terms).
using VectorPowf = __m256 (*)(__m256, __m256);

VectorPowf libmvec_powf() {
    static const VectorPowf f = []() -> VectorPowf {
        void* lib = cpu_has_avx2_f16c() ? dlopen("libmvec.so.1", RTLD_NOW | RTLD_LOCAL) : nullptr;
        return lib != nullptr ? reinterpret_cast<VectorPowf>(dlsym(lib, "_ZGVdN8vv_powf")) : nullptr;
    }();
    return f;
}

__attribute__((target("avx2,f16c"))) void gamma_row_avx2(VectorPowf vpow, double* row, int64_t n, double lo,
                                                         double range, double g) {
    const __m256d vlo = _mm256_set1_pd(lo), vrange = _mm256_set1_pd(range), zero = _mm256_setzero_pd();
    const __m256 vg = _mm256_set1_ps(static_cast<float>(g));
    const __m256 tiny = _mm256_set1_ps(std::numeric_limits<float>::min());
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        const __m256d b0 = _mm256_div_pd(_mm256_sub_pd(_mm256_loadu_pd(row + c), vlo), vrange);
        const __m256d b1 = _mm256_div_pd(_mm256_sub_pd(_mm256_loadu_pd(row + c + 4), vlo), vrange);
        const __m256d pos0 = _mm256_cmp_pd(b0, zero, _CMP_GT_OQ), pos1 = _mm256_cmp_pd(b1, zero, _CMP_GT_OQ);
        const __m256 base = _mm256_set_m128(_mm256_cvtpd_ps(b1), _mm256_cvtpd_ps(b0));
        const __m256 p = vpow(_mm256_max_ps(base, tiny), vg);  // bases at or below 0 are replaced below
        const __m256d p0 = _mm256_cvtps_pd(_mm256_castps256_ps128(p));
        const __m256d p1 = _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1));
        _mm256_storeu_pd(row + c, _mm256_blendv_pd(vlo, _mm256_add_pd(vlo, _mm256_mul_pd(vrange, p0)), pos0));
        _mm256_storeu_pd(row + c + 4, _mm256_blendv_pd(vlo, _mm256_add_pd(vlo, _mm256_mul_pd(vrange, p1)), pos1));
    }
    gamma_row(row + c, n - c, lo, range, g);
}
#endif

// row[c] += sd * noise_z(splitmix64_mix(state + (c + 1) * golden)) for c in [0, n).
void add_noise_portable(double* row, int64_t n, uint64_t state, double sd) {
    for (int64_t c = 0; c < n; ++c) {
        state += ItemRng::kGolden;
        row[c] += sd * static_cast<double>(noise_z(splitmix64_mix(state)));
    }
}

#ifdef FEWSHOT_DA_X86
bool cpu_has_avx512dq() {
    static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
    return has;
}

// Logical right shift of 64-bit lanes (the zero-masked form: GCC 12 warns about the plain one's
// undefined pass-through operand).
__attribute__((target("avx512f"))) inline __m512i shift_right(__m512i z, unsigned n) {
    return _mm512_maskz_srli_epi64(0xff, z, n);
}

// add_noise_portable 8 pixels at a time (64-bit lane multiplies need AVX-512DQ); bit-identical.
__attribute__((target("avx512f,avx512dq"))) void add_noise_avx512(double* row, int64_t n, uint64_t state, double sd) {
    const __m512i golden = _mm512_set1_epi64(static_cast<long long>(ItemRng::kGolden));
    const __m512i c1 = _mm512_set1_epi64(static_cast<long long>(0xbf58476d1ce4e5b9ULL));
    const __m512i c2 = _mm512_set1_epi64(static_cast<long long>(0x94d049bb133111ebULL));
    const __m512i field = _mm512_set1_epi64(0xffff), centre = _mm512_set1_epi64(131070);
    const __m512i step = _mm512_set1_epi64(static_cast<long long>(8 * ItemRng::kGolden));
    const __m256 scale = _mm256_set1_ps(kNoiseScale);
    const __m512d vsd = _mm512_set1_pd(sd);
    __m512i s = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(state)),
                                 _mm512_mullo_epi64(_mm512_setr_epi64(1, 2, 3, 4, 5, 6, 7, 8), golden));
    int64_t c = 0;
    for (; c + 8 <= n; c += 8, s = _mm512_add_epi64(s, step)) {
        __m512i z = _mm512_mullo_epi64(_mm512_xor_si512(s, shift_right(s, 30)), c1);
        z = _mm512_mullo_epi64(_mm512_xor_si512(z, shift_right(z, 27)), c2);
        z = _mm512_xor_si512(z, shift_right(z, 31));
        const __m512i sum = _mm512_add_epi64(
            _mm512_add_epi64(_mm512_and_si512(z, field), _mm512_and_si512(shift_right(z, 16), field)),
            _mm512_add_epi64(_mm512_and_si512(shift_right(z, 32), field), shift_right(z, 48)));
        const __m256 zf = _mm256_mul_ps(_mm512_cvtepi64_ps(_mm512_sub_epi64(sum, centre)), scale);
        const __m512d noise = _mm512_mul_pd(vsd, _mm512_maskz_cvtps_pd(0xff, zf));
        _mm512_storeu_pd(row + c, _mm512_add_pd(_mm512_loadu_pd(row + c), noise));
    }
    add_noise_portable(row + c, n - c, state + static_cast<uint64_t>(c) * ItemRng::kGolden, sd);
}
#endif

void add_noise(double* row, int64_t n, uint64_t state, double sd) {
#ifdef FEWSHOT_DA_X86
    if (cpu_has_avx512dq()) {
        add_noise_avx512(row, n, state, sd);
        return;
    }
#endif
    add_noise_portable(row, n, state, sd);
}

void gamma_in_place(double* row, int64_t n, double lo, double range, double g) {
#ifdef FEWSHOT_DA_X86
    if (const VectorPowf vpow = libmvec_powf()) {
        gamma_row_avx2(vpow, row, n, lo, range, g);
        return;
    }
#endif
    gamma_row(row, n, lo, range, g);
}

#ifdef FEWSHOT_DA_X86
// Unaligned 4- and 8-byte loads.
inline int32_t load32(const void* p) {
    int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline long long load64(const void* p) {
    long long v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// The 4 unaligned 32-bit words starting at base + i[k], k = 0..3.
template <class T>
inline __m128i words4(const T* base, const int32_t* i) {
    return _mm_setr_epi32(load32(base + i[0]), load32(base + i[1]), load32(base + i[2]), load32(base + i[3]));
}

// warp_pixel for 4 columns at a time (AVX2), the same operations in the same order, so the
// results are bit-identical. Blocks wholly outside the slice take the padding; blocks where a neighbourhood
// is not well inside (4 bytes of mask and 2 image values are read per source row) go to warp_pixel.
__attribute__((target("avx2,f16c"))) void warp_row_avx2(const WarpRow& w, int64_t n) {
    const bool half = w.v->dtype == ImageDtype::kFloat16;
    const __m256d one = _mm256_set1_pd(1.0), threshold = _mm256_set1_pd(0.5);
    const __m256d y_max = _mm256_set1_pd(static_cast<double>(w.height - 2));
    const __m256d x_max = _mm256_set1_pd(static_cast<double>(w.width - 4));
    const __m256d zero = _mm256_setzero_pd(), lanes = _mm256_set_pd(3, 2, 1, 0);
    // a neighbourhood is wholly outside when floor(sy) < -1 or > height - 1 (likewise x)
    const __m256d y_low = _mm256_set1_pd(-1.0), y_high = _mm256_set1_pd(static_cast<double>(w.height - 1));
    const __m256d x_low = _mm256_set1_pd(-1.0), x_high = _mm256_set1_pd(static_cast<double>(w.width - 1));
    const __m256d pad = _mm256_set1_pd(w.pad);
    const __m128i width = _mm_set1_epi32(static_cast<int32_t>(w.width)), byte = _mm_set1_epi32(0xff);
    const __m128i low16 = _mm_set1_epi32(0xffff), ones = _mm_set1_epi32(0x0101);
    const float* f32 = static_cast<const float*>(w.image);
    int64_t c = 0;
    for (; c + 4 <= n; c += 4) {
        const __m256d dx = _mm256_sub_pd(_mm256_add_pd(_mm256_set1_pd(static_cast<double>(c)), lanes),
                                         _mm256_set1_pd(w.hx));
        const __m256d sy = _mm256_add_pd(_mm256_set1_pd(w.by), _mm256_mul_pd(_mm256_set1_pd(w.m01), dx));
        const __m256d sx = _mm256_add_pd(_mm256_set1_pd(w.bx), _mm256_mul_pd(_mm256_set1_pd(w.m11), dx));
        const __m256d fy = _mm256_floor_pd(sy), fx = _mm256_floor_pd(sx);
        const __m256d inside = _mm256_and_pd(
            _mm256_and_pd(_mm256_cmp_pd(fy, zero, _CMP_GE_OQ), _mm256_cmp_pd(fy, y_max, _CMP_LE_OQ)),
            _mm256_and_pd(_mm256_cmp_pd(fx, zero, _CMP_GE_OQ), _mm256_cmp_pd(fx, x_max, _CMP_LE_OQ)));
        if (_mm256_movemask_pd(inside) != 0xf) {
            const __m256d outside = _mm256_or_pd(
                _mm256_or_pd(_mm256_cmp_pd(fy, y_low, _CMP_LT_OQ), _mm256_cmp_pd(fy, y_high, _CMP_GT_OQ)),
                _mm256_or_pd(_mm256_cmp_pd(fx, x_low, _CMP_LT_OQ), _mm256_cmp_pd(fx, x_high, _CMP_GT_OQ)));
            if (_mm256_movemask_pd(outside) == 0xf) {  // as warp_pixel's early return, 4 at a time
                _mm256_storeu_pd(w.row + c, pad);
                _mm_storeu_ps(w.yr + c, _mm_setzero_ps());
            } else {
                for (int64_t k = c; k < c + 4; ++k) warp_pixel(w, k);
            }
            continue;
        }
        const __m256d wy = _mm256_sub_pd(sy, fy), wx = _mm256_sub_pd(sx, fx);
        const __m128i p = _mm_add_epi32(_mm_mullo_epi32(_mm256_cvttpd_epi32(fy), width), _mm256_cvttpd_epi32(fx));
        const __m128i q = _mm_add_epi32(p, width);
        // scalar loads of the 2 x 2 neighbourhoods (faster than gathers on the AMD cores measured): one
        // 64-bit load per source row for float32, 32-bit for float16 and for the mask bytes
        alignas(16) int32_t pi[4], qi[4];
        _mm_store_si128(reinterpret_cast<__m128i*>(pi), p);
        _mm_store_si128(reinterpret_cast<__m128i*>(qi), q);
        __m256d v00, v01, v10, v11;
        if (half) {  // one 32-bit load per source row holds both neighbours
            const uint16_t* h = static_cast<const uint16_t*>(w.image);
            const __m128i g0 = words4(h, pi), g1 = words4(h, qi);
            const __m128i a0 = _mm_and_si128(g0, low16), a1 = _mm_srli_epi32(g0, 16);
            const __m128i b0 = _mm_and_si128(g1, low16), b1 = _mm_srli_epi32(g1, 16);
            v00 = _mm256_cvtps_pd(_mm_cvtph_ps(_mm_packus_epi32(a0, a0)));
            v01 = _mm256_cvtps_pd(_mm_cvtph_ps(_mm_packus_epi32(a1, a1)));
            v10 = _mm256_cvtps_pd(_mm_cvtph_ps(_mm_packus_epi32(b0, b0)));
            v11 = _mm256_cvtps_pd(_mm_cvtph_ps(_mm_packus_epi32(b1, b1)));
        } else {  // one 64-bit load per source row fetches both neighbours; then split even / odd floats
            const __m256i split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            const __m256 r0 = _mm256_permutevar8x32_ps(_mm256_castsi256_ps(_mm256_setr_epi64x(
                load64(f32 + pi[0]), load64(f32 + pi[1]), load64(f32 + pi[2]), load64(f32 + pi[3]))), split);
            const __m256 r1 = _mm256_permutevar8x32_ps(_mm256_castsi256_ps(_mm256_setr_epi64x(
                load64(f32 + qi[0]), load64(f32 + qi[1]), load64(f32 + qi[2]), load64(f32 + qi[3]))), split);
            v00 = _mm256_cvtps_pd(_mm256_castps256_ps128(r0));
            v01 = _mm256_cvtps_pd(_mm256_extractf128_ps(r0, 1));
            v10 = _mm256_cvtps_pd(_mm256_castps256_ps128(r1));
            v11 = _mm256_cvtps_pd(_mm256_extractf128_ps(r1, 1));
        }
        const uint8_t* mk = w.mask;
        const __m128i g0 = words4(mk, pi), g1 = words4(mk, qi);
        const __m256d m00 = _mm256_cvtepi32_pd(_mm_and_si128(g0, byte));
        const __m256d m01 = _mm256_cvtepi32_pd(_mm_and_si128(_mm_srli_epi32(g0, 8), byte));
        const __m256d m10 = _mm256_cvtepi32_pd(_mm_and_si128(g1, byte));
        const __m256d m11 = _mm256_cvtepi32_pd(_mm_and_si128(_mm_srli_epi32(g1, 8), byte));
        const __m256d uy = _mm256_sub_pd(one, wy), ux = _mm256_sub_pd(one, wx);
        const __m256d top = _mm256_add_pd(_mm256_mul_pd(ux, v00), _mm256_mul_pd(wx, v01));
        const __m256d bottom = _mm256_add_pd(_mm256_mul_pd(ux, v10), _mm256_mul_pd(wx, v11));
        _mm256_storeu_pd(w.row + c, _mm256_add_pd(_mm256_mul_pd(uy, top), _mm256_mul_pd(wy, bottom)));
        const __m128i pairs0 = _mm_and_si128(g0, low16), pairs1 = _mm_and_si128(g1, low16);
        const __m128i any = _mm_or_si128(pairs0, pairs1);
        if (_mm_testz_si128(any, any)) {  // all 16 mask values 0: the bilinear sum is exactly 0
            _mm_storeu_ps(w.yr + c, _mm_setzero_ps());
        } else if (_mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi32(pairs0, ones), _mm_cmpeq_epi32(pairs1, ones))) ==
                   0xffff) {  // all 1: the sum is 1 up to rounding, >= 0.5
            _mm_storeu_ps(w.yr + c, _mm_set1_ps(1.0f));
        } else {
            const __m256d mt = _mm256_add_pd(_mm256_mul_pd(ux, m00), _mm256_mul_pd(wx, m01));
            const __m256d mb = _mm256_add_pd(_mm256_mul_pd(ux, m10), _mm256_mul_pd(wx, m11));
            const __m256d m = _mm256_add_pd(_mm256_mul_pd(uy, mt), _mm256_mul_pd(wy, mb));
            const __m256d fg = _mm256_and_pd(_mm256_cmp_pd(m, threshold, _CMP_GE_OQ), one);
            _mm_storeu_ps(w.yr + c, _mm256_cvtpd_ps(fg));
        }
    }
    for (; c < n; ++c) warp_pixel(w, c);
}
#endif

void warp_row(const WarpRow& w, int64_t n) {
#ifdef FEWSHOT_DA_X86
    if (cpu_has_avx2_f16c() && w.width >= 4 && w.height >= 2 && w.height * w.width < (int64_t{1} << 31)) {
        warp_row_avx2(w, n);
        return;
    }
#endif
    for (int64_t c = 0; c < n; ++c) warp_pixel(w, c);
}

// Runs body(i) for i in [0, n) on up to num_threads std::threads (the caller's thread included).
// Items are independent, so the scheduling order never changes the result.
template <class Body>
void parallel_for(int64_t n, int num_threads, Body body) {
    const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(num_threads, n));
    if (threads == 1) {
        for (int64_t i = 0; i < n; ++i) body(i);
        return;
    }
    std::atomic<int64_t> next{0};
    auto worker = [&]() {
        for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) body(i);
    };
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(threads - 1));
    for (int64_t t = 1; t < threads; ++t) pool.emplace_back(worker);
    worker();
    for (auto& th : pool) th.join();
}

}  // namespace

void half_to_float(const uint16_t* src, float* dst, int64_t n) {
#ifdef FEWSHOT_DA_X86
    if (cpu_has_f16c()) {
        half_to_float_f16c(src, dst, n);
        return;
    }
#endif
    half_to_float_portable(src, dst, n);
}

SliceBatcher::SliceBatcher(std::vector<SliceVolume> volumes, int64_t batch_size, int64_t crop_h,
                           int64_t crop_w, uint64_t seed, int64_t n_fg_items, int num_threads,
                           const AugmentSpec* augment)
    : volumes_(std::move(volumes)),
      batch_size_(batch_size),
      crop_h_(crop_h),
      crop_w_(crop_w),
      seed_(seed),
      n_fg_items_(n_fg_items) {
    if (volumes_.empty()) throw std::invalid_argument("no volumes registered");
    if (batch_size_ < 1) throw std::invalid_argument("batch_size must be >= 1");
    if (crop_h_ < 1 || crop_w_ < 1) throw std::invalid_argument("crop sizes must be >= 1");
    if (n_fg_items_ < 0 || n_fg_items_ > batch_size_)
        throw std::invalid_argument("n_fg_items must lie in [0, batch_size]");
    int64_t total_slices = 0;
    for (size_t k = 0; k < volumes_.size(); ++k) {
        const SliceVolume& v = volumes_[k];
        const std::string name = "volume " + std::to_string(k);
        if (v.image == nullptr || v.mask == nullptr) throw std::invalid_argument(name + ": null pointer");
        if (v.n_slices < 1 || v.height < 1 || v.width < 1)
            throw std::invalid_argument(name + ": every dimension must be >= 1");
        if (v.allowed.empty()) throw std::invalid_argument(name + ": empty list of allowed slices");
        for (int64_t s : v.allowed) {
            if (s < 0 || s >= v.n_slices)
                throw std::invalid_argument(name + ": slice index " + std::to_string(s) + " out of range for " +
                                            std::to_string(v.n_slices) + " slices");
        }
        min_offset_.push_back(total_slices);
        total_slices += v.n_slices;
    }
    min_cache_.reset(new std::atomic<uint64_t>[static_cast<size_t>(total_slices)]);
    for (int64_t i = 0; i < total_slices; ++i) min_cache_[i].store(0, std::memory_order_relaxed);

    // One read of every allowed mask slice: values must be 0/1; remember which slices have foreground.
    fg_slices_.resize(volumes_.size());
    std::vector<std::string> bad(volumes_.size());
    parallel_for(static_cast<int64_t>(volumes_.size()), num_threads, [&](int64_t k) {
        const SliceVolume& v = volumes_[k];
        const int64_t plane = v.height * v.width;
        std::vector<int8_t> state(static_cast<size_t>(v.n_slices), -1);  // -1 unread, 0 empty, 1 foreground
        for (int64_t s : v.allowed) {
            if (state[s] < 0) {
                const uint8_t* m = v.mask + s * plane;
                uint8_t any = 0;
                for (int64_t i = 0; i < plane; ++i) any |= m[i];
                if (any > 1) {
                    const uint8_t* hit = std::find_if(m, m + plane, [](uint8_t x) { return x > 1; });
                    bad[k] = "volume " + std::to_string(k) + ": mask value " + std::to_string(*hit) + " at slice " +
                             std::to_string(s) + " (masks must hold only 0 and 1)";
                    return;
                }
                state[s] = any ? 1 : 0;
            }
            if (n_fg_items_ > 0 && state[s] == 1) fg_slices_[k].push_back(s);
        }
    });
    for (const std::string& message : bad)
        if (!message.empty()) throw std::invalid_argument(message);
    if (n_fg_items_ > 0) {
        for (size_t k = 0; k < volumes_.size(); ++k)
            if (!fg_slices_[k].empty()) fg_volumes_.push_back(static_cast<int64_t>(k));
        if (fg_volumes_.empty())
            throw std::invalid_argument("foreground sampling requested but no allowed slice has foreground");
    }
    if (augment != nullptr) {
        augment_ = true;
        spec_ = *augment;
        moments_once_.reset(new std::once_flag[static_cast<size_t>(total_slices)]);
        moments_.reset(new SliceMoments[static_cast<size_t>(total_slices)]);
    }
}

ItemDraw SliceBatcher::draw(uint64_t step, int64_t item) const {
    ItemRng rng(seed_, step, static_cast<uint64_t>(item));
    return draw_from(rng, item);
}

AugmentParams SliceBatcher::augment_params(uint64_t step, int64_t item) const {
    if (!augment_) return AugmentParams{};
    ItemRng rng(seed_, step, static_cast<uint64_t>(item));
    draw_from(rng, item);
    return draw_augment(rng, spec_);
}

ItemDraw SliceBatcher::draw_from(ItemRng& rng, int64_t item) const {
    ItemDraw d{};
    if (item >= batch_size_ - n_fg_items_) {
        d.volume = fg_volumes_[rng.below(fg_volumes_.size())];
        const std::vector<int64_t>& list = fg_slices_[d.volume];
        d.slice = list[rng.below(list.size())];
    } else {
        d.volume = static_cast<int64_t>(rng.below(volumes_.size()));
        const std::vector<int64_t>& list = volumes_[d.volume].allowed;
        d.slice = list[rng.below(list.size())];
    }
    const SliceVolume& v = volumes_[d.volume];
    if (v.height >= crop_h_ && v.width >= crop_w_) {
        d.centred = false;
        d.y0 = static_cast<int64_t>(rng.below(static_cast<uint64_t>(v.height - crop_h_ + 1)));
        d.x0 = static_cast<int64_t>(rng.below(static_cast<uint64_t>(v.width - crop_w_ + 1)));
    } else {
        // dpipe: centre = shape // 2, box start = centre - crop // 2 (both dims, even the one that fits)
        d.centred = true;
        d.y0 = v.height / 2 - crop_h_ / 2;
        d.x0 = v.width / 2 - crop_w_ / 2;
    }
    return d;
}

float SliceBatcher::slice_minimum(int64_t volume, int64_t slice) const {
    std::atomic<uint64_t>& cached = min_cache_[min_offset_[volume] + slice];
    const uint64_t c = cached.load(std::memory_order_relaxed);
    uint32_t bits;
    float minimum;
    if (c != 0) {
        bits = static_cast<uint32_t>(c);
        std::memcpy(&minimum, &bits, sizeof minimum);
        return minimum;
    }
    const SliceVolume& v = volumes_[volume];
    const int64_t plane = v.height * v.width;
    bool any_nan = false;
#ifdef FEWSHOT_DA_X86
    if (cpu_has_avx2_f16c()) {
        const size_t item = v.dtype == ImageDtype::kFloat32 ? sizeof(float) : sizeof(uint16_t);
        minimum = minimum_avx2(static_cast<const char*>(v.image) + static_cast<size_t>(slice * plane) * item,
                               v.dtype, plane, &any_nan);
    } else
#endif
    {
        minimum = std::numeric_limits<float>::infinity();
        float chunk[4096];
        for (int64_t start = 0; start < plane; start += 4096) {
            const int64_t n = std::min<int64_t>(4096, plane - start);
            image_to_float(v, slice * plane + start, chunk, n, false);
            for (int64_t i = 0; i < n; ++i) {
                minimum = chunk[i] < minimum ? chunk[i] : minimum;
                any_nan |= chunk[i] != chunk[i];
            }
        }
    }
    if (any_nan) minimum = std::numeric_limits<float>::quiet_NaN();  // as np.min
    std::memcpy(&bits, &minimum, sizeof bits);
    cached.store((uint64_t{1} << 32) | bits, std::memory_order_relaxed);
    return minimum;
}

void SliceBatcher::fill_item(uint64_t step, int64_t item, float* image_out, float* mask_out) const {
    ItemRng rng(seed_, step, static_cast<uint64_t>(item));
    const ItemDraw d = draw_from(rng, item);
    if (augment_) {
        const AugmentParams a = draw_augment(rng, spec_);
        fill_item_augmented(d, a, image_out + item * crop_h_ * crop_w_, mask_out + item * crop_h_ * crop_w_);
        return;
    }
    const SliceVolume& v = volumes_[d.volume];
    const int64_t plane = v.height * v.width;
    float* x = image_out + item * crop_h_ * crop_w_;
    float* y = mask_out + item * crop_h_ * crop_w_;
    const uint8_t* mask = v.mask + d.slice * plane;
    if (!d.centred) {
        for (int64_t r = 0; r < crop_h_; ++r) {
            const int64_t src = (d.y0 + r) * v.width + d.x0;
            image_to_float(v, d.slice * plane + src, x + r * crop_w_, crop_w_);
            mask_to_float(mask + src, y + r * crop_w_, crop_w_);
        }
        store_fence();
        return;
    }
    const float pad = slice_minimum(d.volume, d.slice);
    const int64_t c_lo = std::min(crop_w_, std::max<int64_t>(0, -d.x0));
    const int64_t c_hi = std::max(c_lo, std::min(crop_w_, v.width - d.x0));
    for (int64_t r = 0; r < crop_h_; ++r) {
        float* xr = x + r * crop_w_;
        float* yr = y + r * crop_w_;
        const int64_t row = d.y0 + r;
        if (row < 0 || row >= v.height) {
            std::fill(xr, xr + crop_w_, pad);
            std::fill(yr, yr + crop_w_, 0.0f);
            continue;
        }
        std::fill(xr, xr + c_lo, pad);
        std::fill(yr, yr + c_lo, 0.0f);
        const int64_t src = row * v.width + d.x0 + c_lo;
        image_to_float(v, d.slice * plane + src, xr + c_lo, c_hi - c_lo);
        mask_to_float(mask + src, yr + c_lo, c_hi - c_lo);
        std::fill(xr + c_hi, xr + crop_w_, pad);
        std::fill(yr + c_hi, yr + crop_w_, 0.0f);
    }
    store_fence();
}

const SliceBatcher::SliceMoments& SliceBatcher::slice_moments(int64_t volume, int64_t slice) const {
    const int64_t index = min_offset_[volume] + slice;
    std::call_once(moments_once_[index], [&]() {
        const SliceVolume& v = volumes_[volume];
        const int64_t plane = v.height * v.width;
        float maximum = -std::numeric_limits<float>::infinity();
        double sum = 0;
        bool any_nan = false;
        float chunk[4096];
        for (int64_t start = 0; start < plane; start += 4096) {
            const int64_t n = std::min<int64_t>(4096, plane - start);
            image_to_float(v, slice * plane + start, chunk, n, false);
            for (int64_t i = 0; i < n; ++i) {
                maximum = chunk[i] > maximum ? chunk[i] : maximum;
                any_nan |= chunk[i] != chunk[i];
                sum += chunk[i];
            }
        }
        if (any_nan) maximum = std::numeric_limits<float>::quiet_NaN();  // as np.max
        moments_[index] = SliceMoments{maximum, sum / static_cast<double>(plane)};
    });
    return moments_[index];
}

// One item with augmentation, row by row: (1) the row's image and mask values, either the plain crop
// (no spatial transform) or the bilinear warp; (2) the intensity transforms in place.
void SliceBatcher::fill_item_augmented(const ItemDraw& d, const AugmentParams& a, float* x, float* y) const {
    const SliceVolume& v = volumes_[d.volume];
    const int64_t plane = v.height * v.width, height = v.height, width = v.width;
    const size_t item_size = v.dtype == ImageDtype::kFloat32 ? sizeof(float) : sizeof(uint16_t);
    const void* image = static_cast<const char*>(v.image) + static_cast<size_t>(d.slice * plane) * item_size;
    const uint8_t* mask = v.mask + d.slice * plane;
    const bool spatial = a.spatial(), bias = a.has_bias(), gamma = a.gamma != 1, contrast = a.contrast != 1;
    const bool need_min = spatial || d.centred || bias || gamma;
    const float lo = need_min ? slice_minimum(d.volume, d.slice) : 0.0f;
    double range = 0, mean = 0;
    if (gamma || contrast) {
        const SliceMoments& m = slice_moments(d.volume, d.slice);
        range = static_cast<double>(m.maximum) - lo;
        mean = m.mean;
    }
    const double hy = 0.5 * static_cast<double>(crop_h_ - 1), hx = 0.5 * static_cast<double>(crop_w_ - 1);
    std::vector<double> col_field;
    if (bias) {
        col_field.resize(static_cast<size_t>(crop_w_));
        for (int64_t c = 0; c < crop_w_; ++c) {
            const double u = hx > 0 ? (static_cast<double>(c) - hx) / hx : 0.0;
            col_field[c] = std::exp(a.bias[0] * u + a.bias[1] * u * u);
        }
    }
    const double cy = static_cast<double>(d.y0) + hy + a.translate_y;
    const double cx = static_cast<double>(d.x0) + hx + a.translate_x;
    const double m00 = a.matrix[0], m01 = a.matrix[1], m10 = a.matrix[2], m11 = a.matrix[3];
    const bool apply_gamma = gamma && range > 0;
    const bool intensity = bias || apply_gamma || contrast || a.brightness != 0 || a.noise_sd != 0;
    const int64_t c_lo = std::min(crop_w_, std::max<int64_t>(0, -d.x0));
    const int64_t c_hi = std::max(c_lo, std::min(crop_w_, width - d.x0));
    std::vector<double> row(static_cast<size_t>(crop_w_));  // one output row in double precision

    for (int64_t r = 0; r < crop_h_; ++r) {
        float* xr = x + r * crop_w_;
        float* yr = y + r * crop_w_;
        if (!spatial) {  // the plain crop / pad, as fill_item
            const int64_t src_row = d.y0 + r;
            if (src_row < 0 || src_row >= height) {
                std::fill(xr, xr + crop_w_, lo);
                std::fill(yr, yr + crop_w_, 0.0f);
            } else {
                std::fill(xr, xr + c_lo, lo);
                std::fill(yr, yr + c_lo, 0.0f);
                const int64_t src = src_row * width + d.x0 + c_lo;
                image_to_float(v, d.slice * plane + src, xr + c_lo, c_hi - c_lo, false);
                for (int64_t c = c_lo; c < c_hi; ++c) yr[c] = static_cast<float>(mask[src - c_lo + c]);
                std::fill(xr + c_hi, xr + crop_w_, lo);
                std::fill(yr + c_hi, yr + crop_w_, 0.0f);
            }
            if (!intensity) continue;
            for (int64_t c = 0; c < crop_w_; ++c) row[c] = xr[c];
        } else {
            const double dy = static_cast<double>(r) - hy;
            const WarpRow w{&v, image, mask, height, width, lo, cy + m00 * dy, cx + m10 * dy, m01, m11, hx,
                            row.data(), yr};
            warp_row(w, crop_w_);
        }
        // Intensity in double: gamma's slope is unbounded near the slice minimum, so float rounding of
        // (v - min) would show up as ~1e-4 differences there.
        if (bias) {
            const double w = hy > 0 ? (static_cast<double>(r) - hy) / hy : 0.0;
            const double row_field = std::exp(a.bias[2] * w + a.bias[3] * w * w);
            for (int64_t c = 0; c < crop_w_; ++c) row[c] = lo + (row[c] - lo) * (row_field * col_field[c]);
        }
        if (apply_gamma) gamma_in_place(row.data(), crop_w_, lo, range, a.gamma);
        if (contrast)
            for (int64_t c = 0; c < crop_w_; ++c) row[c] = mean + (row[c] - mean) * a.contrast;
        if (a.brightness != 0)
            for (int64_t c = 0; c < crop_w_; ++c) row[c] += a.brightness;
        if (a.noise_sd != 0)
            add_noise(row.data(), crop_w_, a.noise_key + static_cast<uint64_t>(r * crop_w_) * ItemRng::kGolden,
                      a.noise_sd);
        for (int64_t c = 0; c < crop_w_; ++c) xr[c] = static_cast<float>(row[c]);
    }
}

void SliceBatcher::fill(uint64_t step, float* image_out, float* mask_out, int num_threads) const {
    parallel_for(batch_size_, num_threads,
                 [&](int64_t item) { fill_item(step, item, image_out, mask_out); });
}

}  // namespace fewshot_da

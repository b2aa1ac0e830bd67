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
#include <immintrin.h>
#define FEWSHOT_DA_X86 1
#endif

#include "parallel.h"

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
// Image values come out in float32, either as they are (relative = false; outside the slice: pad) or
// relative to the slice minimum, v - pad (relative = true; outside: 0). Relative values keep their
// relative accuracy near the minimum, where gamma's slope is unbounded: every bilinear term is >= 0, so
// float32 sums are within a few ulps *relative* to the result (float32 sums of the raw values were not:
// 7e-5 differences to SciPy after gamma < 1).
struct WarpRow {
    const SliceVolume* v;
    const void* image;  // the slice
    const uint8_t* mask;
    int64_t height, width;
    float pad;  // image value outside the slice (its minimum)
    bool relative;
    double by, bx, m01, m11, hx;
    float* row;  // out: bilinear image values (float32, see above)
    float* yr;   // out: thresholded mask
};

// The mask decision of output column c in double precision: bilinear (outside 0), >= 0.5 -> 1 (a tie at
// exactly 0.5 goes to foreground). The float32 kernels defer to it whenever their sum is near 0.5.
inline float mask_pixel_double(const WarpRow& w, int64_t c) {
    const double dx = static_cast<double>(c) - w.hx;
    const double sy = w.by + w.m01 * dx, sx = w.bx + w.m11 * dx;
    const int64_t iy = floor_int(sy), ix = floor_int(sx);
    const double wy = sy - static_cast<double>(iy), wx = sx - static_cast<double>(ix);
    const bool y0in = iy >= 0 && iy < w.height, y1in = iy + 1 >= 0 && iy + 1 < w.height;
    const bool x0in = ix >= 0 && ix < w.width, x1in = ix + 1 >= 0 && ix + 1 < w.width;
    if (!(y0in || y1in) || !(x0in || x1in)) return 0.0f;
    const int64_t p = iy * w.width + ix;
    const double m00 = y0in && x0in ? w.mask[p] : 0, m01 = y0in && x1in ? w.mask[p + 1] : 0;
    const double m10 = y1in && x0in ? w.mask[p + w.width] : 0;
    const double m11 = y1in && x1in ? w.mask[p + w.width + 1] : 0;
    const double m = (1.0 - wy) * ((1.0 - wx) * m00 + wx * m01) + wy * ((1.0 - wx) * m10 + wx * m11);
    return m >= 0.5 ? 1.0f : 0.0f;
}

// Output column c, scalar: coordinates in double, weights rounded to float32, image sums in float32.
inline void warp_pixel(const WarpRow& w, int64_t c) {
    const double dx = static_cast<double>(c) - w.hx;
    const double sy = w.by + w.m01 * dx, sx = w.bx + w.m11 * dx;
    const int64_t iy = floor_int(sy), ix = floor_int(sx);
    const bool y0in = iy >= 0 && iy < w.height, y1in = iy + 1 >= 0 && iy + 1 < w.height;
    const bool x0in = ix >= 0 && ix < w.width, x1in = ix + 1 >= 0 && ix + 1 < w.width;
    const float out = w.relative ? 0.0f : w.pad;
    if (!(y0in || y1in) || !(x0in || x1in)) {  // the whole neighbourhood is outside
        w.row[c] = out;
        w.yr[c] = 0.0f;
        return;
    }
    const float wy = static_cast<float>(sy - static_cast<double>(iy));
    const float wx = static_cast<float>(sx - static_cast<double>(ix));
    const float uy = 1.0f - wy, ux = 1.0f - wx;
    const float shift = w.relative ? w.pad : 0.0f;
    const int64_t p = iy * w.width + ix;
    const float v00 = y0in && x0in ? load_pixel(*w.v, w.image, p) - shift : out;
    const float v01 = y0in && x1in ? load_pixel(*w.v, w.image, p + 1) - shift : out;
    const float v10 = y1in && x0in ? load_pixel(*w.v, w.image, p + w.width) - shift : out;
    const float v11 = y1in && x1in ? load_pixel(*w.v, w.image, p + w.width + 1) - shift : out;
    w.row[c] = uy * (ux * v00 + wx * v01) + wy * (ux * v10 + wx * v11);
    w.yr[c] = mask_pixel_double(w, c);
}

// The intensity chain on one row, float32 (see fill_item_augmented for the constants):
//   relative input d = v - lo (absolute input: subtract lo first when gamma is on):
//     bias d *= field; gamma d = R (d / R)^g (0 where d <= 0); out = K + c d [+ sd z]
//   absolute input x (no gamma): bias x = lo + (x - lo) field; out = K + c x [+ sd z]
struct IntensityRow {
    const float* src;
    bool src_absolute;      // src holds image values (else values relative to lo)
    bool relative;          // the chain runs on d = v - lo (gamma is on)
    const float* field;     // bias field of the row, or null
    bool gamma;
    float lo, range, inv_range, g, contrast, offset;  // offset = K
    const float* z;         // noise values of the row, or null
    float sd;
    float* out;
};

void intensity_row(const IntensityRow& q, int64_t n) {
    for (int64_t c = 0; c < n; ++c) {
        float t = q.src[c];
        if (q.relative) {
            if (q.src_absolute) t -= q.lo;
            if (q.field != nullptr) t *= q.field[c];
            if (q.gamma) {
                const float base = t * q.inv_range;
                t = base > 0 ? q.range * static_cast<float>(std::pow(static_cast<double>(base),
                                                                     static_cast<double>(q.g)))
                             : 0.0f;
            }
        } else if (q.field != nullptr) {
            t = q.lo + (t - q.lo) * q.field[c];
        }
        t = q.offset + q.contrast * t;
        if (q.z != nullptr) t += q.sd * q.z[c];
        q.out[c] = t;
    }
}

// z[c] = noise_z(splitmix64_mix(state + (c + 1) * golden)) for c in [0, n).
void noise_row_portable(float* z, int64_t n, uint64_t state) {
    for (int64_t c = 0; c < n; ++c) {
        state += ItemRng::kGolden;
        z[c] = noise_z(splitmix64_mix(state));
    }
}

#ifdef FEWSHOT_DA_X86
// b^g for 8 floats b >= FLT_MIN as exp2(g log2 b), no tables: log2 b = e + log2 m with m in
// [sqrt(1/2), sqrt(2)), log2 m = (2 / ln 2) atanh(s), s = (m - 1) / (m + 1), odd series to s^9 (|s| <=
// 0.172: truncation 4e-10); exp2 y = 2^n 2^f, n = round(y), f in [-1/2, 1/2], Taylor to f^7 (truncation
// 5e-9). Relative error a few float32 ulps times (1 + |y| ln 2); in the slice's units the absolute error
// is at most range x 2^y |y| x that, and 2^y |y| <= 0.53: a few 1e-7 x range, as with libmvec's powf
// (used before: table lookups in double, the largest cost of the gamma path, and a scalar slow path for
// results below FLT_MIN; here y is clamped to >= -125, and such results are < 3e-38 of the range).
__attribute__((target("avx2,fma,f16c"))) inline __m256 pow8(__m256 b, __m256 g) {
    const __m256i bits = _mm256_castps_si256(b);
    __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
    __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                                                   _mm256_set1_epi32(0x3f800000)));  // [1, 2)
    const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
    m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
    e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // the mask is -1 where m was halved
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 s = _mm256_div_ps(_mm256_sub_ps(m, one), _mm256_add_ps(m, one));
    const __m256 s2 = _mm256_mul_ps(s, s);
    // 2 / (k ln 2), k = 1, 3, ..., 9
    __m256 t = _mm256_set1_ps(0.32059889f);
    t = _mm256_fmadd_ps(t, s2, _mm256_set1_ps(0.41219858f));
    t = _mm256_fmadd_ps(t, s2, _mm256_set1_ps(0.57707802f));
    t = _mm256_fmadd_ps(t, s2, _mm256_set1_ps(0.96179669f));
    t = _mm256_fmadd_ps(t, s2, _mm256_set1_ps(2.88539008f));
    const __m256 log2b = _mm256_fmadd_ps(t, s, _mm256_cvtepi32_ps(e));
    __m256 y = _mm256_mul_ps(g, log2b);
    y = _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(-125.0f)), _mm256_set1_ps(127.0f));
    const __m256 n = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(y, n);
    // (ln 2)^k / k!, k = 7 .. 0
    __m256 p = _mm256_set1_ps(1.5252734e-05f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.5403530e-04f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558e-03f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291e-03f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504109e-02f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022651e-01f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718e-01f));
    p = _mm256_fmadd_ps(p, f, one);
    return _mm256_castsi256_ps(
        _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)));
}

// intensity_row 8 pixels at a time (AVX2 + FMA, pow8).
__attribute__((target("avx2,fma,f16c"))) void intensity_row_avx2(const IntensityRow& q, int64_t n) {
    const __m256 lo = _mm256_set1_ps(q.lo), range = _mm256_set1_ps(q.range);
    const __m256 inv_range = _mm256_set1_ps(q.inv_range), g = _mm256_set1_ps(q.g);
    const __m256 contrast = _mm256_set1_ps(q.contrast), offset = _mm256_set1_ps(q.offset);
    const __m256 sd = _mm256_set1_ps(q.sd), zero = _mm256_setzero_ps();
    const __m256 tiny = _mm256_set1_ps(std::numeric_limits<float>::min());
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        __m256 t = _mm256_loadu_ps(q.src + c);
        if (q.relative) {
            if (q.src_absolute) t = _mm256_sub_ps(t, lo);
            if (q.field != nullptr) t = _mm256_mul_ps(t, _mm256_loadu_ps(q.field + c));
            if (q.gamma) {
                const __m256 base = _mm256_mul_ps(t, inv_range);
                const __m256 pos = _mm256_cmp_ps(base, zero, _CMP_GT_OQ);
                const __m256 p = pow8(_mm256_max_ps(base, tiny), g);  // bases <= 0 are replaced below
                t = _mm256_and_ps(_mm256_mul_ps(range, p), pos);
            }
        } else if (q.field != nullptr) {
            t = _mm256_fmadd_ps(_mm256_sub_ps(t, lo), _mm256_loadu_ps(q.field + c), lo);
        }
        t = _mm256_fmadd_ps(contrast, t, offset);
        if (q.z != nullptr) t = _mm256_fmadd_ps(sd, _mm256_loadu_ps(q.z + c), t);
        _mm256_storeu_ps(q.out + c, t);
    }
    IntensityRow tail = q;
    tail.src += c, tail.out += c;
    if (tail.field != nullptr) tail.field += c;
    if (tail.z != nullptr) tail.z += c;
    intensity_row(tail, n - c);
}

bool cpu_has_avx512dq() {
    static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
    return has;
}

bool cpu_has_avx2_fma() {
    static const bool has = cpu_has_avx2_f16c() && __builtin_cpu_supports("fma");
    return has;
}

// Logical right shift of 64-bit lanes (the zero-masked form: GCC 12 warns about the plain one's
// undefined pass-through operand).
__attribute__((target("avx512f"))) inline __m512i shift_right(__m512i z, unsigned n) {
    return _mm512_maskz_srli_epi64(0xff, z, n);
}

// noise_row_portable 8 pixels at a time (64-bit lane multiplies need AVX-512DQ); bit-identical.
__attribute__((target("avx512f,avx512dq"))) void noise_row_avx512(float* zout, int64_t n, uint64_t state) {
    const __m512i golden = _mm512_set1_epi64(static_cast<long long>(ItemRng::kGolden));
    const __m512i c1 = _mm512_set1_epi64(static_cast<long long>(0xbf58476d1ce4e5b9ULL));
    const __m512i c2 = _mm512_set1_epi64(static_cast<long long>(0x94d049bb133111ebULL));
    const __m512i field = _mm512_set1_epi64(0xffff), centre = _mm512_set1_epi64(131070);
    const __m512i step = _mm512_set1_epi64(static_cast<long long>(8 * ItemRng::kGolden));
    const __m256 scale = _mm256_set1_ps(kNoiseScale);
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
        _mm256_storeu_ps(zout + c, _mm256_mul_ps(_mm512_cvtepi64_ps(_mm512_sub_epi64(sum, centre)), scale));
    }
    noise_row_portable(zout + c, n - c, state + static_cast<uint64_t>(c) * ItemRng::kGolden);
}
#endif

void noise_row(float* z, int64_t n, uint64_t state) {
#ifdef FEWSHOT_DA_X86
    if (cpu_has_avx512dq()) {
        noise_row_avx512(z, n, state);
        return;
    }
#endif
    noise_row_portable(z, n, state);
}

void intensity(const IntensityRow& q, int64_t n) {
#ifdef FEWSHOT_DA_X86
    if (cpu_has_avx2_fma()) {
        intensity_row_avx2(q, n);
        return;
    }
#endif
    intensity_row(q, n);
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

// The 8 unaligned 32-bit words starting at base + i[k], k = 0..7.
template <class T>
__attribute__((target("avx2,fma,f16c"))) inline __m256i words8(const T* base, const int32_t* i) {
    return _mm256_setr_epi32(load32(base + i[0]), load32(base + i[1]), load32(base + i[2]), load32(base + i[3]),
                             load32(base + i[4]), load32(base + i[5]), load32(base + i[6]), load32(base + i[7]));
}

// 8 float32 pairs (f[i[k]], f[i[k] + 1]) split into the first and second elements, in lane order.
__attribute__((target("avx2,fma,f16c"))) inline void pairs8(const float* f, const int32_t* i, __m256& first,
                                                            __m256& second) {
    const __m256 a = _mm256_castsi256_ps(
        _mm256_setr_epi64x(load64(f + i[0]), load64(f + i[1]), load64(f + i[2]), load64(f + i[3])));
    const __m256 b = _mm256_castsi256_ps(
        _mm256_setr_epi64x(load64(f + i[4]), load64(f + i[5]), load64(f + i[6]), load64(f + i[7])));
    // shuffle: lanes (0, 1, 4, 5 | 2, 3, 6, 7); the 64-bit permute restores 0..7
    first = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xd8));
    second = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd)), 0xd8));
}

// 8 float16 pairs from 32-bit words g (low half first), converted to float32.
__attribute__((target("avx2,fma,f16c"))) inline void half_pairs8(__m256i g, __m256& first, __m256& second) {
    const __m256i low16 = _mm256_set1_epi32(0xffff);
    const __m256i packed = _mm256_permute4x64_epi64(
        _mm256_packus_epi32(_mm256_and_si256(g, low16), _mm256_srli_epi32(g, 16)), 0xd8);
    first = _mm256_cvtph_ps(_mm256_castsi256_si128(packed));
    second = _mm256_cvtph_ps(_mm256_extracti128_si256(packed, 1));
}

// The 8 16-bit words at base + i[k], k = 0..7, zero-extended to 32 bits.
__attribute__((target("avx2,fma,f16c"))) inline __m256i halfwords8(const uint8_t* base, const int32_t* i) {
    uint16_t h[8];
    for (int k = 0; k < 8; ++k) std::memcpy(&h[k], base + i[k], sizeof h[k]);
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
}

// Border blocks of warp_row_avx2: sel = (ylast, yfirst, xlast, xfirst, in00, in01, in10, in11) lane masks.
// Pairs read at clamped indices: row iy = H - 1 sits in the second pair, row iy + 1 = 0 (iy = -1) in the
// first (likewise columns); then outside neighbours take `fill`.
__attribute__((target("avx2,fma,f16c"))) inline void place_pairs(const __m256* sel, __m256& a00, __m256& a01,
                                                                __m256& a10, __m256& a11, __m256 fill) {
    const __m256 t0 = _mm256_blendv_ps(a00, a10, sel[0]), t1 = _mm256_blendv_ps(a01, a11, sel[0]);
    const __m256 b0 = _mm256_blendv_ps(a10, a00, sel[1]), b1 = _mm256_blendv_ps(a11, a01, sel[1]);
    a00 = _mm256_blendv_ps(fill, _mm256_blendv_ps(t0, t1, sel[2]), sel[4]);
    a01 = _mm256_blendv_ps(fill, _mm256_blendv_ps(t1, t0, sel[3]), sel[5]);
    a10 = _mm256_blendv_ps(fill, _mm256_blendv_ps(b0, b1, sel[2]), sel[6]);
    a11 = _mm256_blendv_ps(fill, _mm256_blendv_ps(b1, b0, sel[3]), sel[7]);
}

// warp_pixel for 8 columns at a time (AVX2 + FMA): coordinates and weights as warp_pixel (double, then
// rounded to float32), float32 sums (FMA, so within an ulp or two of the scalar path, not bit-identical).
// Blocks wholly outside the slice store the padding. Blocks with a neighbourhood partly outside read
// each neighbour pair at an index clamped into the slice, move the pairs the clamp shifted back into
// place and put the padding where a neighbour is outside. Mask sums within 1e-4 of the threshold are
// decided again in double (mask_pixel_double), so masks never depend on float32 rounding.
__attribute__((target("avx2,fma,f16c"))) void warp_row_avx2(const WarpRow& w, int64_t n) {
    const bool half = w.v->dtype == ImageDtype::kFloat16;
    const __m256d lanes0 = _mm256_set_pd(3, 2, 1, 0), lanes1 = _mm256_set_pd(7, 6, 5, 4);
    const __m256d by = _mm256_set1_pd(w.by), bx = _mm256_set1_pd(w.bx);
    const __m256d m01 = _mm256_set1_pd(w.m01), m11 = _mm256_set1_pd(w.m11), hx = _mm256_set1_pd(w.hx);
    // floors are clamped to [-2, size] before the conversion to int32 (-2 and size: wholly outside)
    const __m256d y_lim = _mm256_set1_pd(static_cast<double>(w.height));
    const __m256d x_lim = _mm256_set1_pd(static_cast<double>(w.width)), minus2 = _mm256_set1_pd(-2.0);
    const __m256i minus1 = _mm256_set1_epi32(-1), zero_i = _mm256_setzero_si256();
    const __m256i h1 = _mm256_set1_epi32(static_cast<int32_t>(w.height - 1));
    const __m256i h2 = _mm256_set1_epi32(static_cast<int32_t>(w.height - 2));
    const __m256i w1 = _mm256_set1_epi32(static_cast<int32_t>(w.width - 1));
    const __m256i w2 = _mm256_set1_epi32(static_cast<int32_t>(w.width - 2));
    const __m256 pad = _mm256_set1_ps(w.relative ? 0.0f : w.pad), shift = _mm256_set1_ps(w.relative ? w.pad : 0.0f);
    const __m256 onef = _mm256_set1_ps(1.0f), zerof = _mm256_setzero_ps(), half_f = _mm256_set1_ps(0.5f);
    const __m256 band = _mm256_set1_ps(1e-4f), sign = _mm256_set1_ps(-0.0f);
    const __m256i width = _mm256_set1_epi32(static_cast<int32_t>(w.width)), byte = _mm256_set1_epi32(0xff);
    const __m256i ones = _mm256_set1_epi32(0x0101);
    const float* f32 = static_cast<const float*>(w.image);
    const uint16_t* f16 = static_cast<const uint16_t*>(w.image);
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        const __m256d cc = _mm256_set1_pd(static_cast<double>(c));
        const __m256d dx0 = _mm256_sub_pd(_mm256_add_pd(cc, lanes0), hx);
        const __m256d dx1 = _mm256_sub_pd(_mm256_add_pd(cc, lanes1), hx);
        const __m256d sy0 = _mm256_add_pd(by, _mm256_mul_pd(m01, dx0)), sy1 = _mm256_add_pd(by, _mm256_mul_pd(m01, dx1));
        const __m256d sx0 = _mm256_add_pd(bx, _mm256_mul_pd(m11, dx0)), sx1 = _mm256_add_pd(bx, _mm256_mul_pd(m11, dx1));
        const __m256d fy0 = _mm256_floor_pd(sy0), fy1 = _mm256_floor_pd(sy1);
        const __m256d fx0 = _mm256_floor_pd(sx0), fx1 = _mm256_floor_pd(sx1);
        const __m256 wy = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_sub_pd(sy1, fy1)), _mm256_cvtpd_ps(_mm256_sub_pd(sy0, fy0)));
        const __m256 wx = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_sub_pd(sx1, fx1)), _mm256_cvtpd_ps(_mm256_sub_pd(sx0, fx0)));
        const __m256i iy = _mm256_set_m128i(_mm256_cvttpd_epi32(_mm256_min_pd(_mm256_max_pd(fy1, minus2), y_lim)),
                                            _mm256_cvttpd_epi32(_mm256_min_pd(_mm256_max_pd(fy0, minus2), y_lim)));
        const __m256i ix = _mm256_set_m128i(_mm256_cvttpd_epi32(_mm256_min_pd(_mm256_max_pd(fx1, minus2), x_lim)),
                                            _mm256_cvttpd_epi32(_mm256_min_pd(_mm256_max_pd(fx0, minus2), x_lim)));
        // neighbour rows / columns inside: y0 = iy in [0, H - 1], y1 = iy + 1 in [0, H - 1]
        const __m256i y0in = _mm256_andnot_si256(_mm256_or_si256(_mm256_cmpgt_epi32(zero_i, iy), _mm256_cmpgt_epi32(iy, h1)), minus1);
        const __m256i y1in = _mm256_andnot_si256(_mm256_or_si256(_mm256_cmpgt_epi32(minus1, iy), _mm256_cmpgt_epi32(iy, h2)), minus1);
        const __m256i x0in = _mm256_andnot_si256(_mm256_or_si256(_mm256_cmpgt_epi32(zero_i, ix), _mm256_cmpgt_epi32(ix, w1)), minus1);
        const __m256i x1in = _mm256_andnot_si256(_mm256_or_si256(_mm256_cmpgt_epi32(minus1, ix), _mm256_cmpgt_epi32(ix, w2)), minus1);
        const __m256i inside = _mm256_and_si256(_mm256_and_si256(y0in, y1in), _mm256_and_si256(x0in, x1in));
        const bool fast = _mm256_movemask_epi8(inside) == -1;
        if (!fast) {
            const __m256i some = _mm256_and_si256(_mm256_or_si256(y0in, y1in), _mm256_or_si256(x0in, x1in));
            if (_mm256_testz_si256(some, some)) {  // every neighbourhood wholly outside
                _mm256_storeu_ps(w.row + c, pad);
                _mm256_storeu_ps(w.yr + c, zerof);
                continue;
            }
        }
        // pair indices, clamped into the slice for partly outside neighbourhoods
        const __m256i cy = fast ? iy : _mm256_max_epi32(_mm256_min_epi32(iy, h2), zero_i);
        const __m256i cx = fast ? ix : _mm256_max_epi32(_mm256_min_epi32(ix, w2), zero_i);
        const __m256i p = _mm256_add_epi32(_mm256_mullo_epi32(cy, width), cx);
        const __m256i q = _mm256_add_epi32(p, width);
        alignas(32) int32_t pi[8], qi[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(pi), p);
        _mm256_store_si256(reinterpret_cast<__m256i*>(qi), q);
        __m256 v00, v01, v10, v11;
        if (half) {  // one 32-bit load per source row holds both neighbours
            half_pairs8(words8(f16, pi), v00, v01);
            half_pairs8(words8(f16, qi), v10, v11);
        } else {  // one 64-bit load per source row fetches both neighbours
            pairs8(f32, pi, v00, v01);
            pairs8(f32, qi, v10, v11);
        }
        v00 = _mm256_sub_ps(v00, shift), v01 = _mm256_sub_ps(v01, shift);
        v10 = _mm256_sub_ps(v10, shift), v11 = _mm256_sub_ps(v11, shift);
        const __m256i g0 = halfwords8(w.mask, pi), g1 = halfwords8(w.mask, qi);
        __m256 m00 = _mm256_cvtepi32_ps(_mm256_and_si256(g0, byte)), mm01 = _mm256_cvtepi32_ps(_mm256_srli_epi32(g0, 8));
        __m256 m10 = _mm256_cvtepi32_ps(_mm256_and_si256(g1, byte)), mm11 = _mm256_cvtepi32_ps(_mm256_srli_epi32(g1, 8));
        bool uniform0 = false, uniform1 = false;
        if (fast) {
            const __m256i any = _mm256_or_si256(g0, g1);
            uniform0 = _mm256_testz_si256(any, any);  // all 32 mask values 0: the bilinear sum is exactly 0
            uniform1 = _mm256_movemask_epi8(_mm256_and_si256(_mm256_cmpeq_epi32(g0, ones), _mm256_cmpeq_epi32(g1, ones))) == -1;
        } else {
            // the clamp moved row iy = H - 1 into the second pair, row iy + 1 = 0 (iy = -1) into the first
            // (likewise columns); then outside neighbours take the padding
            const __m256 ylast = _mm256_castsi256_ps(_mm256_cmpeq_epi32(iy, h1));
            const __m256 yfirst = _mm256_castsi256_ps(_mm256_cmpeq_epi32(iy, minus1));
            const __m256 xlast = _mm256_castsi256_ps(_mm256_cmpeq_epi32(ix, w1));
            const __m256 xfirst = _mm256_castsi256_ps(_mm256_cmpeq_epi32(ix, minus1));
            const __m256 in00 = _mm256_castsi256_ps(_mm256_and_si256(y0in, x0in));
            const __m256 in01 = _mm256_castsi256_ps(_mm256_and_si256(y0in, x1in));
            const __m256 in10 = _mm256_castsi256_ps(_mm256_and_si256(y1in, x0in));
            const __m256 in11 = _mm256_castsi256_ps(_mm256_and_si256(y1in, x1in));
            const __m256 sel[8] = {ylast, yfirst, xlast, xfirst, in00, in01, in10, in11};
            place_pairs(sel, v00, v01, v10, v11, pad);
            place_pairs(sel, m00, mm01, m10, mm11, zerof);
        }
        const __m256 uy = _mm256_sub_ps(onef, wy), ux = _mm256_sub_ps(onef, wx);
        const __m256 top = _mm256_fmadd_ps(wx, v01, _mm256_mul_ps(ux, v00));
        const __m256 bottom = _mm256_fmadd_ps(wx, v11, _mm256_mul_ps(ux, v10));
        _mm256_storeu_ps(w.row + c, _mm256_fmadd_ps(wy, bottom, _mm256_mul_ps(uy, top)));
        if (uniform0) {
            _mm256_storeu_ps(w.yr + c, zerof);
        } else if (uniform1) {
            _mm256_storeu_ps(w.yr + c, onef);  // all 1: the sum is 1 up to rounding, >= 0.5
        } else {
            const __m256 mt = _mm256_fmadd_ps(wx, mm01, _mm256_mul_ps(ux, m00));
            const __m256 mb = _mm256_fmadd_ps(wx, mm11, _mm256_mul_ps(ux, m10));
            const __m256 m = _mm256_fmadd_ps(wy, mb, _mm256_mul_ps(uy, mt));
            _mm256_storeu_ps(w.yr + c, _mm256_and_ps(_mm256_cmp_ps(m, half_f, _CMP_GE_OQ), onef));
            const __m256 near = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(m, half_f)), band, _CMP_LT_OQ);
            if (int doubt = _mm256_movemask_ps(near)) {
                for (int k = 0; k < 8; ++k)
                    if (doubt >> k & 1) w.yr[c + k] = mask_pixel_double(w, c + k);
            }
        }
    }
    for (; c < n; ++c) warp_pixel(w, c);
}
#endif

void warp_row(const WarpRow& w, int64_t n) {
#ifdef FEWSHOT_DA_X86
    if (cpu_has_avx2_fma() && w.width >= 2 && w.height >= 2 && w.height * w.width < (int64_t{1} << 31)) {
        warp_row_avx2(w, n);
        return;
    }
#endif
    for (int64_t c = 0; c < n; ++c) warp_pixel(w, c);
}

// Touches every cache line of the source rectangle rows [y_lo, y_hi] x columns [x_lo, x_hi] of the slice
// (image and mask), in address order. The warp then walks the slice along rotated rows, a pattern the
// hardware prefetchers do not follow: without this pass most of its loads missed to L3 / DRAM (the slice
// is new to every item), with it they hit L2 (a 256 x 256 float32 slice + mask is 320 KB).
void touch_source(const SliceVolume& v, const void* image, const uint8_t* mask, int64_t y_lo, int64_t y_hi,
                     int64_t x_lo, int64_t x_hi) {
    const int64_t item = v.dtype == ImageDtype::kFloat32 ? 4 : 2;
    uint32_t sink = 0;  // real loads: __builtin_prefetch over the same lines made no measurable difference
    for (int64_t r = y_lo; r <= y_hi; ++r) {
        const unsigned char* img = static_cast<const unsigned char*>(image) + (r * v.width + x_lo) * item;
        const int64_t img_n = (x_hi - x_lo + 1) * item;
        for (int64_t k = 0; k < img_n; k += 64) sink += img[k];
        sink += img[img_n - 1];
        const uint8_t* mk = mask + r * v.width + x_lo;
        for (int64_t k = 0; k <= x_hi - x_lo; k += 64) sink += mk[k];
        sink += mk[x_hi - x_lo];
    }
    volatile uint32_t keep = sink;
    (void)keep;
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
    parallel_for_each(num_threads, static_cast<int64_t>(volumes_.size()), [&](int64_t k) {
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
    std::vector<float> field;
    if (bias) {
        col_field.resize(static_cast<size_t>(crop_w_));
        field.resize(static_cast<size_t>(crop_w_));
        for (int64_t c = 0; c < crop_w_; ++c) {
            const double u = hx > 0 ? (static_cast<double>(c) - hx) / hx : 0.0;
            col_field[c] = std::exp(a.bias[0] * u + a.bias[1] * u * u);
        }
    }
    const double cy = static_cast<double>(d.y0) + hy + a.translate_y;
    const double cx = static_cast<double>(d.x0) + hx + a.translate_x;
    const double m00 = a.matrix[0], m01 = a.matrix[1], m10 = a.matrix[2], m11 = a.matrix[3];
    const bool apply_gamma = gamma && range > 0;
    const bool intensity_on = bias || apply_gamma || contrast || a.brightness != 0 || a.noise_sd != 0;
    const int64_t c_lo = std::min(crop_w_, std::max<int64_t>(0, -d.x0));
    const int64_t c_hi = std::max(c_lo, std::min(crop_w_, width - d.x0));
    std::vector<float> z(a.noise_sd != 0 ? static_cast<size_t>(crop_w_) : 0);

    // The intensity chain in float32 (intensity_row). With gamma it runs on d = v - lo, which keeps
    // gamma accurate near the minimum; contrast and brightness fold into one multiply-add,
    // out = K + c d with K = mean + (lo - mean) c + b (without gamma out = K + c v, K = mean (1 - c) + b),
    // the constants formed in double and rounded once.
    const double cf = contrast ? a.contrast : 1.0;
    const double mu = contrast ? mean : 0.0;
    IntensityRow q{};
    q.relative = apply_gamma;
    q.gamma = apply_gamma;
    q.lo = lo;
    q.range = static_cast<float>(range);
    q.inv_range = apply_gamma ? static_cast<float>(1.0 / range) : 0.0f;
    q.g = static_cast<float>(a.gamma);
    q.contrast = static_cast<float>(cf);
    q.offset = static_cast<float>(apply_gamma ? mu + (static_cast<double>(lo) - mu) * cf + a.brightness
                                              : mu - mu * cf + a.brightness);
    q.field = bias ? field.data() : nullptr;
    q.z = a.noise_sd != 0 ? z.data() : nullptr;
    q.sd = static_cast<float>(a.noise_sd);

    if (spatial) {  // the source rectangle the crop maps into (the map is affine: its corners bound it)
        double y_min = 1e300, y_max = -1e300, x_min = 1e300, x_max = -1e300;
        for (const double dy : {-hy, hy})
            for (const double dx : {-hx, hx}) {
                const double sy = cy + m00 * dy + m01 * dx, sx = cx + m10 * dy + m11 * dx;
                y_min = std::min(y_min, sy), y_max = std::max(y_max, sy);
                x_min = std::min(x_min, sx), x_max = std::max(x_max, sx);
            }
        const double h1 = static_cast<double>(height - 1), w1 = static_cast<double>(width - 1);
        if (y_max >= 0 && y_min <= h1 && x_max >= 0 && x_min <= w1)
            touch_source(v, image, mask, static_cast<int64_t>(std::max(0.0, y_min)),
                            static_cast<int64_t>(std::min(h1, y_max + 1)), static_cast<int64_t>(std::max(0.0, x_min)),
                            static_cast<int64_t>(std::min(w1, x_max + 1)));
    }
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
            q.src_absolute = true;
        } else {
            const double dy = static_cast<double>(r) - hy;
            const WarpRow w{&v, image, mask, height, width, lo, apply_gamma, cy + m00 * dy, cx + m10 * dy, m01, m11,
                            hx, xr, yr};
            warp_row(w, crop_w_);
            q.src_absolute = !apply_gamma;
        }
        if (!intensity_on) continue;
        if (bias) {
            const double w = hy > 0 ? (static_cast<double>(r) - hy) / hy : 0.0;
            const double row_field = std::exp(a.bias[2] * w + a.bias[3] * w * w);
            for (int64_t c = 0; c < crop_w_; ++c) field[c] = static_cast<float>(row_field * col_field[c]);
        }
        if (a.noise_sd != 0)
            noise_row(z.data(), crop_w_, a.noise_key + static_cast<uint64_t>(r * crop_w_) * ItemRng::kGolden);
        q.src = xr;
        q.out = xr;
        intensity(q, crop_w_);
    }
}

void SliceBatcher::fill(uint64_t step, float* image_out, float* mask_out, int num_threads) const {
    parallel_for_each(num_threads, batch_size_,
                 [&](int64_t item) { fill_item(step, item, image_out, mask_out); });
}

}  // namespace fewshot_da

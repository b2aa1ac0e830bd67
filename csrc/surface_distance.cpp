// Surface-distance core: union bounding box, corner-grid neighbour codes, stencil tolerance queries and an
// exact separable EDT. See surface_distance.h for the contract and surfel.h for the per-surfel rules.
#include "surface_distance.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "surfel.h"

namespace fewshot_da {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Threads to use: the request (0 = OpenMP default), but no more than one per 64k voxels, since waking a
// team costs more than small inputs take.
int resolve_threads(int num_threads, const MaskPair& m) {
#ifdef _OPENMP
    const int64_t wanted = num_threads > 0 ? num_threads : omp_get_max_threads();
    const int64_t voxels = m.shape[0] * m.shape[1] * m.shape[2];
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, voxels / 65536)));
#else
    (void)num_threads;
    (void)m;
    return 1;
#endif
}

// Runs `fn` on `n` threads (the caller's included) and rethrows the first exception.
template <typename Fn>
void run_threads(int n, Fn&& fn) {
    std::exception_ptr error;
    std::mutex error_lock;
    auto guarded = [&]() {
        try {
            fn();
        } catch (...) {
            const std::lock_guard<std::mutex> lock(error_lock);
            if (!error) error = std::current_exception();
        }
    };
    std::vector<std::thread> pool;
    for (int k = 1; k < n; ++k) pool.emplace_back(guarded);
    guarded();
    for (auto& t : pool) t.join();
    if (error) std::rethrow_exception(error);
}

// Inclusive bounding box of the union of both masks; false when both are empty.
struct Box {
    int64_t lo[3], hi[3];
};

bool union_bbox(const MaskPair& m, int threads, Box* box) {
    const int64_t n0 = m.shape[0], n1 = m.shape[1], n2 = m.shape[2];
    const int64_t rows = n0 * n1;
    int64_t lo[3] = {n0, n1, n2}, hi[3] = {-1, -1, -1};
#pragma omp parallel num_threads(threads)
    {
        int64_t tlo[3] = {n0, n1, n2}, thi[3] = {-1, -1, -1};
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
            for (const uint8_t* base : {m.gt, m.pred}) {
                const uint8_t* row = base + r * n2;
                int64_t first = -1;
                // 8 bytes at a time: rows are mostly empty
                int64_t k = 0;
                for (; k + 8 <= n2; k += 8) {
                    uint64_t w;
                    std::memcpy(&w, row + k, 8);
                    if (w) break;
                }
                for (; k < n2; ++k) {
                    if (row[k]) {
                        first = k;
                        break;
                    }
                }
                if (first < 0) continue;
                int64_t last = n2 - 1;
                while (!row[last]) --last;
                const int64_t i0 = r / n1, i1 = r % n1;
                tlo[0] = std::min(tlo[0], i0), thi[0] = std::max(thi[0], i0);
                tlo[1] = std::min(tlo[1], i1), thi[1] = std::max(thi[1], i1);
                tlo[2] = std::min(tlo[2], first), thi[2] = std::max(thi[2], last);
            }
        }
#pragma omp critical
        for (int a = 0; a < 3; ++a) lo[a] = std::min(lo[a], tlo[a]), hi[a] = std::max(hi[a], thi[a]);
    }
    if (hi[0] < 0) return false;
    for (int a = 0; a < 3; ++a) box->lo[a] = lo[a], box->hi[a] = hi[a];
    return true;
}

// Corner grid of the crop: m corners per axis (axis 0 of a 2D pair has one "corner": the image itself).
struct Grid {
    int64_t m[3];
    int64_t size() const { return m[0] * m[1] * m[2]; }
    int64_t index(int64_t c0, int64_t c1, int64_t c2) const { return (c0 * m[1] + c1) * m[2] + c2; }
};

Grid make_grid(const MaskPair& m, const Box& box) {
    Grid g;
    // surfels sit on voxel corners, so an extent of e voxels has e + 1 corners
    for (int a = 0; a < 3; ++a) g.m[a] = (m.ndim == 2 && a == 0) ? 1 : box.hi[a] - box.lo[a] + 2;
    return g;
}

// Neighbour codes of every crop corner of `mask` into `codes` (layout `g`).
void build_codes(const uint8_t* mask, const MaskPair& m, const Box& box, const Grid& g, int threads,
                 uint8_t* codes) {
    const int64_t n1 = m.shape[1], n2 = m.shape[2];
    const int64_t len = box.hi[2] - box.lo[2] + 1;  // voxels per cropped row; corners = len + 1
    const int64_t rows = g.m[0] * g.m[1];
    const std::vector<uint8_t> zeros(static_cast<size_t>(len), 0);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t c0 = r / g.m[1], c1 = r % g.m[1];
        // the four (3D) or two (2D) voxel rows around this corner row; outside the box = background
        const uint8_t* src[4];
        const int nrows = m.ndim == 3 ? 4 : 2;
        for (int k = 0; k < nrows; ++k) {
            const int64_t v0 = m.ndim == 3 ? box.lo[0] + c0 - 1 + (k >> 1) : 0;
            const int64_t v1 = m.ndim == 3 ? box.lo[1] + c1 - 1 + (k & 1) : box.lo[1] + c1 - 1 + k;
            const bool inside = v1 >= box.lo[1] && v1 <= box.hi[1] &&
                                (m.ndim == 2 || (v0 >= box.lo[0] && v0 <= box.hi[0]));
            src[k] = inside ? mask + (v0 * n1 + v1) * n2 + box.lo[2] : zeros.data();
        }
        uint8_t* out = codes + g.index(c0, c1, 0);
        if (m.ndim == 3) {
            const uint8_t *a = src[0], *b = src[1], *c = src[2], *d = src[3];
            out[0] = code_3d(pair_bits(0, a[0]), pair_bits(0, b[0]), pair_bits(0, c[0]), pair_bits(0, d[0]));
            for (int64_t k = 1; k < len; ++k)
                out[k] = code_3d(pair_bits(a[k - 1], a[k]), pair_bits(b[k - 1], b[k]), pair_bits(c[k - 1], c[k]),
                                 pair_bits(d[k - 1], d[k]));
            const int64_t e = len - 1;
            out[len] = code_3d(pair_bits(a[e], 0), pair_bits(b[e], 0), pair_bits(c[e], 0), pair_bits(d[e], 0));
        } else {
            const uint8_t *a = src[0], *b = src[1];
            out[0] = code_2d(pair_bits(0, a[0]), pair_bits(0, b[0]));
            for (int64_t k = 1; k < len; ++k) out[k] = code_2d(pair_bits(a[k - 1], a[k]), pair_bits(b[k - 1], b[k]));
            out[len] = code_2d(pair_bits(a[len - 1], 0), pair_bits(b[len - 1], 0));
        }
    }
}

void area_table(const MaskPair& m, double table[256]) {
    std::fill(table, table + 256, 0.0);
    if (m.ndim == 3) surfel_areas_3d(m.spacing_mm, table);
    else surfel_areas_2d(m.spacing_mm + 1, table);
}

// 1D lower envelope of parabolas (Felzenszwalb & Huttenlocher) in place on f[0..n) with step `s` mm:
// f[q] <- min_v f[v] + ((q - v) s)^2, skipping infinite sites. v, z are scratch of size n, n + 1.
void envelope_1d(double* f, int64_t n, double s, int64_t* v, double* z, double* out) {
    int64_t k = -1;
    for (int64_t q = 0; q < n; ++q) {
        if (f[q] == kInf) continue;
        const double xq = static_cast<double>(q) * s, fq = f[q] + xq * xq;
        while (k >= 0) {
            const double xv = static_cast<double>(v[k]) * s;
            const double sect = (fq - (f[v[k]] + xv * xv)) / (2.0 * (xq - xv));
            if (sect <= z[k]) --k;
            else {
                ++k;
                v[k] = q;
                z[k] = sect;
                break;
            }
        }
        if (k < 0) {
            k = 0;
            v[0] = q;
            z[0] = -kInf;
        }
        z[k + 1] = kInf;
    }
    if (k < 0) {
        for (int64_t q = 0; q < n; ++q) out[q] = kInf;
        return;
    }
    int64_t j = 0;
    for (int64_t q = 0; q < n; ++q) {
        const double xq = static_cast<double>(q) * s;
        while (z[j + 1] < xq) ++j;
        const double x = static_cast<double>(q - v[j]) * s;
        out[q] = f[v[j]] + x * x;
    }
}

// Squared distance (mm^2) from the corners of the crop grid to the nearest surfel in `codes`; axes are
// processed 0, 1, 2 so the sum is ((x0^2 + x1^2) + x2^2), the order SciPy's EDT uses. Only rows holding
// a surfel of `query_codes` are finished by the last pass (the others are left partial): those are the
// only places the caller reads.
std::vector<double> squared_edt(const uint8_t* codes, const uint8_t* query_codes, const Grid& g, const MaskPair& m,
                                int threads) {
    const int64_t m0 = g.m[0], m1 = g.m[1], m2 = g.m[2], plane = m1 * m2, n = m0 * plane;
    std::vector<double> d(static_cast<size_t>(n));
    const double s0 = m.spacing_mm[0];
    // axis 0: nearest surfel along each column by two sweeps over whole planes (vectorises)
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t p = 0; p < plane; ++p) {
            int64_t last = -1;
            for (int64_t c0 = 0; c0 < m0; ++c0) {
                const int64_t idx = c0 * plane + p;
                if (is_surfel(codes[idx], m.ndim)) last = c0;
                d[idx] = last < 0 ? kInf : static_cast<double>(c0 - last);
            }
            last = -1;
            for (int64_t c0 = m0 - 1; c0 >= 0; --c0) {
                const int64_t idx = c0 * plane + p;
                if (is_surfel(codes[idx], m.ndim)) last = c0;
                double steps = d[idx];
                if (last >= 0) steps = std::min(steps, static_cast<double>(last - c0));
                const double x = steps * s0;
                d[idx] = steps == kInf ? kInf : x * x;
            }
        }
        // axis 1: per plane and column
        std::vector<double> f(m1), o(m1), z(m1 + 1);
        std::vector<int64_t> v(m1);
#pragma omp for schedule(static)
        for (int64_t col = 0; col < m0 * m2; ++col) {
            const int64_t c0 = col / m2, c2 = col % m2;
            double* base = d.data() + c0 * plane + c2;
            for (int64_t c1 = 0; c1 < m1; ++c1) f[c1] = base[c1 * m2];
            envelope_1d(f.data(), m1, m.spacing_mm[1], v.data(), z.data(), o.data());
            for (int64_t c1 = 0; c1 < m1; ++c1) base[c1 * m2] = o[c1];
        }
        // axis 2: contiguous rows
        std::vector<double> f2(m2), o2(m2), z2(m2 + 1);
        std::vector<int64_t> v2(m2);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < m0 * m1; ++row) {
            const uint8_t* query = query_codes + row * m2;
            bool needed = false;
            for (int64_t k = 0; k < m2 && !needed; ++k) needed = is_surfel(query[k], m.ndim);
            if (!needed) continue;
            double* base = d.data() + row * m2;
            std::copy(base, base + m2, f2.begin());
            envelope_1d(f2.data(), m2, m.spacing_mm[2], v2.data(), z2.data(), o2.data());
            std::copy(o2.begin(), o2.end(), base);
        }
    }
    return d;
}

struct Codes {
    Box box;
    Grid grid;
    std::vector<uint8_t> gt, pred;
};

bool make_codes(const MaskPair& m, int threads, Codes* c) {
    if (!union_bbox(m, threads, &c->box)) return false;
    c->grid = make_grid(m, c->box);
    c->gt.assign(static_cast<size_t>(c->grid.size()), 0);
    c->pred.assign(static_cast<size_t>(c->grid.size()), 0);
    build_codes(m.gt, m, c->box, c->grid, threads, c->gt.data());
    build_codes(m.pred, m, c->box, c->grid, threads, c->pred.data());
    return true;
}

void check(const MaskPair& m) {
    if (m.ndim != 2 && m.ndim != 3) throw std::invalid_argument("masks must be 2D or 3D");
    if (m.ndim == 2 && m.shape[0] != 1) throw std::invalid_argument("2D masks are passed as shape (1, n0, n1)");
    for (int a = 0; a < 3; ++a) {
        if (m.shape[a] <= 0) throw std::invalid_argument("mask shape must be non-empty");
        if (!(m.spacing_mm[a] > 0) || !std::isfinite(m.spacing_mm[a]))
            throw std::invalid_argument("spacing_mm must be positive and finite");
    }
}


// ---- stencil path. The masks are read once, plane by plane: each voxel row is packed to bits, a corner
// row's surfels are OR(8 neighbours) & ~AND(8 neighbours) on 64 corners per word, and a tolerance query
// ORs the other mask's surfel words at the stencil offsets (shifted along the row); only surfels are then
// visited one by one, for their code. Each thread keeps small rings of packed voxel planes (2 r0 + 2) and
// surfel planes (2 r0 + 1), which stay in cache; chunks of planes are claimed from an atomic counter.

// Packs a row of n bytes (nonzero = 1) into bits; out has words(n) words.
inline void pack_row(const uint8_t* row, int64_t n, uint64_t* out, int64_t words) {
    std::fill(out, out + words, 0ULL);
    int64_t k = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    for (; k + 16 <= n; k += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k));
        const uint64_t bits = static_cast<uint64_t>(~_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero)) & 0xFFFF);
        out[k >> 6] |= bits << (k & 63);
        if ((k & 63) > 48) out[(k >> 6) + 1] |= bits >> (64 - (k & 63));
    }
#endif
    for (; k < n; ++k)
        if (row[k]) out[k >> 6] |= 1ULL << (k & 63);
}

// Bits [64 * w + shift, 64 * w + shift + 64) of a row of `words` words (zeros outside the row).
inline uint64_t bits_at(const uint64_t* row, int64_t words, int64_t w, int64_t shift) {
    const int64_t start = 64 * w + shift;
    const int64_t q = start >= 0 ? start / 64 : -((-start + 63) / 64);
    const int r = static_cast<int>(start - 64 * q);
    const uint64_t lo = (q >= 0 && q < words) ? row[q] : 0;
    const uint64_t hi = (q + 1 >= 0 && q + 1 < words) ? row[q + 1] : 0;
    return r == 0 ? lo : (lo >> r) | (hi << (64 - r));
}

// Bit v of a packed row (0 for v = -1, the voxel before the row).
inline int bit_of(const uint64_t* row, int64_t v) {
    return v < 0 ? 0 : static_cast<int>((row[v >> 6] >> (v & 63)) & 1);
}

void stencil_counts(const MaskPair& m, const std::vector<std::vector<std::array<int64_t, 3>>>& stencils,
                         int threads, std::vector<std::vector<int64_t>>& hist) {
    const int64_t n0 = m.shape[0], n1 = m.shape[1], n2 = m.shape[2];
    const int64_t m0 = m.ndim == 3 ? n0 + 1 : 1, m1 = n1 + 1, m2 = n2 + 1;
    const int64_t words = (m2 + 63) / 64;  // per row, voxels and corners alike
    int64_t r[3] = {0, 0, 0};
    for (const auto& st : stencils)
        for (const auto& o : st)
            for (int a = 0; a < 3; ++a) r[a] = std::max(r[a], std::abs(o[a]));
    const int ntol = static_cast<int>(stencils.size());
    const int ndim = m.ndim;
    const int nthreads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, m0)));
    const int64_t chunk_planes = nthreads == 1 ? m0 : std::max<int64_t>(8, m0 / (4 * nthreads));
    const int64_t n_chunks = (m0 + chunk_planes - 1) / chunk_planes;
    std::atomic<int64_t> next_chunk{0};
    std::mutex merge;
    auto worker = [&]() {
        // rings: surfel bits of corner planes (2 r0 + 1) and packed voxel planes (2 r0 + 2), per mask
        const int64_t cslots = 2 * r[0] + 1, vslots = 2 * r[0] + 2;
        const int64_t cplane = m1 * words, vplane = n1 * words;
        std::vector<uint64_t> surf[2], vox[2];
        std::vector<uint8_t> vrow_any[2], crow_any[2];
        std::vector<int64_t> cslot_plane(cslots, -1), vslot_plane[2];
        for (int w = 0; w < 2; ++w) {
            surf[w].assign(static_cast<size_t>(cslots * cplane), 0);
            vox[w].assign(static_cast<size_t>(vslots * vplane), 0);
            vrow_any[w].assign(static_cast<size_t>(vslots * n1), 0);
            crow_any[w].assign(static_cast<size_t>(cslots * m1), 0);
            vslot_plane[w].assign(static_cast<size_t>(vslots), -1);
        }
        const std::vector<uint64_t> zero_row(static_cast<size_t>(words), 0);
        // packed voxel plane i0 of mask w (nullptr outside the array)
        auto voxels = [&](int w, int64_t i0) -> const uint64_t* {
            if (i0 < 0 || i0 >= n0) return nullptr;
            const int64_t slot = i0 % vslots;
            uint64_t* plane = vox[w].data() + slot * vplane;
            if (vslot_plane[w][slot] != i0) {
                const uint8_t* mask = (w == 0 ? m.gt : m.pred) + i0 * n1 * n2;
                uint8_t* any = vrow_any[w].data() + slot * n1;
                for (int64_t i1 = 0; i1 < n1; ++i1) {
                    uint64_t* out = plane + i1 * words;
                    pack_row(mask + i1 * n2, n2, out, words);
                    uint64_t acc = 0;
                    for (int64_t k = 0; k < words; ++k) acc |= out[k];
                    any[i1] = acc != 0;
                }
                vslot_plane[w][slot] = i0;
            }
            return plane;
        };
        // per-row "has foreground" flags of packed voxel plane i0 (nullptr outside the array)
        auto plane_any = [&](int w, int64_t i0) -> const uint8_t* {
            return (i0 < 0 || i0 >= n0) ? nullptr : vrow_any[w].data() + (i0 % vslots) * n1;
        };
        // voxel row i1 of a packed plane, or the zero row
        auto vrow = [&](const uint64_t* plane, const uint8_t* any, int64_t i1) -> const uint64_t* {
            return (plane != nullptr && i1 >= 0 && i1 < n1 && any[i1]) ? plane + i1 * words : zero_row.data();
        };
        auto build = [&](int64_t c0) {
            if (c0 < 0 || c0 >= m0 || cslot_plane[c0 % cslots] == c0) return;
            const int64_t slot = c0 % cslots;
            for (int w = 0; w < 2; ++w) {
                const int64_t lo0 = ndim == 3 ? c0 - 1 : 0;
                const uint64_t* pl = voxels(w, lo0);
                const uint64_t* pu = ndim == 3 ? voxels(w, c0) : nullptr;
                const uint8_t* al = plane_any(w, lo0);
                const uint8_t* au = ndim == 3 ? plane_any(w, c0) : nullptr;
                uint64_t* out = surf[w].data() + slot * cplane;
                uint8_t* any = crow_any[w].data() + slot * m1;
                for (int64_t c1 = 0; c1 < m1; ++c1) {
                    const uint64_t* rows[4];
                    int nrows;
                    if (ndim == 3) {
                        rows[0] = vrow(pl, al, c1 - 1), rows[1] = vrow(pl, al, c1);
                        rows[2] = vrow(pu, au, c1 - 1), rows[3] = vrow(pu, au, c1);
                        nrows = 4;
                    } else {
                        rows[0] = vrow(pl, al, c1 - 1), rows[1] = vrow(pl, al, c1);
                        nrows = 2;
                    }
                    uint64_t* o = out + c1 * words;
                    bool empty = true;
                    for (int k = 0; k < nrows; ++k) empty &= rows[k] == zero_row.data();
                    if (empty) {
                        if (any[c1]) std::fill(o, o + words, 0ULL);
                        any[c1] = 0;
                        continue;
                    }
                    uint64_t acc = 0;
                    for (int64_t wi = 0; wi < words; ++wi) {
                        uint64_t all = ~0ULL, one = 0;
                        for (int k = 0; k < nrows; ++k) {
                            // corner bit b sees voxels b - 1 (row shifted up by one) and b
                            const uint64_t upper = rows[k][wi];
                            const uint64_t lower = (upper << 1) | (wi > 0 ? rows[k][wi - 1] >> 63 : 0);
                            all &= upper & lower;
                            one |= upper | lower;
                        }
                        o[wi] = one & ~all;
                        acc |= o[wi];
                    }
                    any[c1] = acc != 0;
                }
            }
            cslot_plane[slot] = c0;
        };
        std::vector<int64_t> h(static_cast<size_t>(ntol) * 1024, 0);
        std::vector<int64_t> first_offset(ntol + 1, 0);
        for (int t = 0; t < ntol; ++t) first_offset[t + 1] = first_offset[t] + static_cast<int64_t>(stencils[t].size());
        std::vector<const uint64_t*> look[2], look_plane[2];
        for (int w = 0; w < 2; ++w) look[w].resize(first_offset[ntol]), look_plane[w].resize(first_offset[ntol]);
        for (int64_t chunk = next_chunk++; chunk < n_chunks; chunk = next_chunk++) {
            const int64_t begin = chunk * chunk_planes, end = std::min(m0, begin + chunk_planes);
            for (int64_t c0 = std::max<int64_t>(0, begin - r[0]); c0 < std::min(m0, begin + r[0]); ++c0) build(c0);
            for (int64_t c0 = begin; c0 < end; ++c0) {
                build(c0 + r[0]);
                const int64_t slot = c0 % cslots;
                const int64_t lo0 = ndim == 3 ? c0 - 1 : 0;
                const uint64_t* vl[2] = {voxels(0, lo0), voxels(1, lo0)};
                const uint64_t* vu[2] = {ndim == 3 ? voxels(0, c0) : nullptr, ndim == 3 ? voxels(1, c0) : nullptr};
                const uint8_t* al[2] = {plane_any(0, lo0), plane_any(1, lo0)};
                const uint8_t* au[2] = {ndim == 3 ? plane_any(0, c0) : nullptr, ndim == 3 ? plane_any(1, c0) : nullptr};
                // per stencil offset: the other mask's surfel plane it lands in (nullptr outside the grid)
                for (int w = 0; w < 2; ++w)
                    for (int t = 0; t < ntol; ++t)
                        for (size_t j = 0; j < stencils[t].size(); ++j) {
                            const int64_t p0 = c0 + stencils[t][j][0];
                            look_plane[w][first_offset[t] + static_cast<int64_t>(j)] =
                                (p0 >= 0 && p0 < m0) ? surf[w].data() + (p0 % cslots) * cplane : nullptr;
                        }
                for (int64_t c1 = 0; c1 < m1; ++c1) {
                    const bool gany = crow_any[0][slot * m1 + c1], pany = crow_any[1][slot * m1 + c1];
                    if (!gany && !pany) continue;
                    for (int side = 0; side < 2; ++side) {
                        if (!(side == 0 ? gany : pany)) continue;
                        const int other = 1 - side;
                        const uint64_t* mine = surf[side].data() + slot * cplane + c1 * words;
                        // the other mask's surfel rows at every stencil offset
                        for (int t = 0; t < ntol; ++t)
                            for (size_t j = 0; j < stencils[t].size(); ++j) {
                                const int64_t jj = first_offset[t] + static_cast<int64_t>(j);
                                const int64_t p1 = c1 + stencils[t][j][1];
                                const uint64_t* plane = look_plane[other][jj];
                                look[other][jj] =
                                    (plane != nullptr && p1 >= 0 && p1 < m1) ? plane + p1 * words : zero_row.data();
                            }
                        const uint64_t* rows[4];
                        int nrows;
                        if (ndim == 3) {
                            rows[0] = vrow(vl[side], al[side], c1 - 1), rows[1] = vrow(vl[side], al[side], c1);
                            rows[2] = vrow(vu[side], au[side], c1 - 1), rows[3] = vrow(vu[side], au[side], c1);
                            nrows = 4;
                        } else {
                            rows[0] = vrow(vl[side], al[side], c1 - 1), rows[1] = vrow(vl[side], al[side], c1);
                            nrows = 2;
                        }
                        for (int64_t wi = 0; wi < words; ++wi) {
                            const uint64_t s = mine[wi];
                            if (!s) continue;
                            for (int t = 0; t < ntol; ++t) {
                                uint64_t hit = 0;
                                for (int64_t j = first_offset[t]; j < first_offset[t + 1] && (hit & s) != s; ++j) {
                                    const auto& o = stencils[t][static_cast<size_t>(j - first_offset[t])];
                                    hit |= bits_at(look[other][j], words, wi, o[2]);
                                }
                                int64_t* ht = h.data() + 1024 * t + 512 * side;
                                uint64_t todo = s;
                                while (todo) {
                                    const int b = __builtin_ctzll(todo);
                                    todo &= todo - 1;
                                    const int64_t k = 64 * wi + b;
                                    int code = 0;
                                    for (int q = 0; q < nrows; ++q)
                                        code = (code << 2) | (bit_of(rows[q], k - 1) << 1) | bit_of(rows[q], k);
                                    ++ht[code];
                                    if ((hit >> b) & 1) ++ht[256 + code];
                                }
                            }
                        }
                    }
                }
            }
        }
        const std::lock_guard<std::mutex> lock(merge);
        for (int t = 0; t < ntol; ++t)
            for (int k = 0; k < 1024; ++k) hist[t][k] += h[1024 * t + k];
    };
    run_threads(nthreads, worker);
}

}  // namespace

namespace {
SurfaceDistanceArrays distances_impl(const MaskPair& m, int threads, std::vector<uint8_t>* gt_codes,
                                     std::vector<uint8_t>* pred_codes);
}  // namespace

void surface_dice_areas(const MaskPair& m, const double* tolerances_mm, int n_tolerances, int num_threads,
                        double* out) {
    check(m);
    const int threads = resolve_threads(num_threads, m);
    std::fill(out, out + 4 * n_tolerances, 0.0);
    if (n_tolerances <= 0) return;
    std::vector<std::vector<std::array<int64_t, 3>>> stencils;
    std::vector<int> stencil_tol, edt_tol;
    for (int t = 0; t < n_tolerances; ++t) {
        if (!(tolerances_mm[t] >= 0)) throw std::invalid_argument("tolerance_mm must be >= 0");
        auto st = corner_stencil(m.ndim, m.spacing_mm, tolerances_mm[t], kMaxStencilOffsets);
        if (st.empty()) edt_tol.push_back(t);
        else stencils.push_back(std::move(st)), stencil_tol.push_back(t);
    }
    double areas[256];
    area_table(m, areas);
    std::vector<std::vector<int64_t>> hist(n_tolerances, std::vector<int64_t>(4 * 256, 0));
    if (!stencils.empty()) {
        std::vector<std::vector<int64_t>> sh(stencils.size(), std::vector<int64_t>(4 * 256, 0));
        stencil_counts(m, stencils, threads, sh);
        for (size_t k = 0; k < stencil_tol.size(); ++k) hist[stencil_tol[k]] = sh[k];
    }
    if (!edt_tol.empty()) {
        // tolerances too wide for a stencil: threshold exact distances instead
        std::vector<uint8_t> gt_codes, pred_codes;
        const SurfaceDistanceArrays d = distances_impl(m, threads, &gt_codes, &pred_codes);
        for (int t : edt_tol) {
            auto& ht = hist[t];
            const double tol = tolerances_mm[t];
            for (size_t i = 0; i < gt_codes.size(); ++i) {
                ++ht[gt_codes[i]];
                if (d.gt_to_pred_mm[i] <= tol) ++ht[256 + gt_codes[i]];
            }
            for (size_t i = 0; i < pred_codes.size(); ++i) {
                ++ht[512 + pred_codes[i]];
                if (d.pred_to_gt_mm[i] <= tol) ++ht[768 + pred_codes[i]];
            }
        }
    }
    for (int t = 0; t < n_tolerances; ++t) {
        areas_from_counts(hist[t].data(), areas, out + 4 * t);
    }
}

namespace {

// Exact distances on the crop (see surface_distances); optionally also each surfel's code.
SurfaceDistanceArrays distances_impl(const MaskPair& m, int threads, std::vector<uint8_t>* gt_codes,
                                     std::vector<uint8_t>* pred_codes) {
    SurfaceDistanceArrays res;
    Codes c;
    if (!make_codes(m, threads, &c)) return res;
    const Grid& g = c.grid;
    double areas[256];
    area_table(m, areas);
    const std::vector<double> d_to_gt = squared_edt(c.gt.data(), c.pred.data(), g, m, threads);
    const std::vector<double> d_to_pred = squared_edt(c.pred.data(), c.gt.data(), g, m, threads);
    const int64_t rows = g.m[0] * g.m[1], m2 = g.m[2];
    // per-row surfel counts, then a prefix sum, so rows fill the outputs in raster order in parallel
    std::vector<int64_t> ng(rows + 1, 0), np(rows + 1, 0);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        int64_t a = 0, b = 0;
        for (int64_t k = 0; k < m2; ++k) {
            a += is_surfel(c.gt[r * m2 + k], m.ndim);
            b += is_surfel(c.pred[r * m2 + k], m.ndim);
        }
        ng[r + 1] = a, np[r + 1] = b;
    }
    for (int64_t r = 0; r < rows; ++r) ng[r + 1] += ng[r], np[r + 1] += np[r];
    res.gt_to_pred_mm.resize(ng[rows]);
    res.gt_areas_mm2.resize(ng[rows]);
    res.pred_to_gt_mm.resize(np[rows]);
    res.pred_areas_mm2.resize(np[rows]);
    if (gt_codes) gt_codes->resize(ng[rows]);
    if (pred_codes) pred_codes->resize(np[rows]);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        int64_t a = ng[r], b = np[r];
        for (int64_t k = 0; k < m2; ++k) {
            const int64_t idx = r * m2 + k;
            const uint8_t gc = c.gt[idx], pc = c.pred[idx];
            if (is_surfel(gc, m.ndim)) {
                res.gt_to_pred_mm[a] = std::sqrt(d_to_pred[idx]);
                if (gt_codes) (*gt_codes)[a] = gc;
                res.gt_areas_mm2[a++] = areas[gc];
            }
            if (is_surfel(pc, m.ndim)) {
                res.pred_to_gt_mm[b] = std::sqrt(d_to_gt[idx]);
                if (pred_codes) (*pred_codes)[b] = pc;
                res.pred_areas_mm2[b++] = areas[pc];
            }
        }
    }
    return res;
}

}  // namespace

SurfaceDistanceArrays surface_distances(const MaskPair& m, int num_threads) {
    check(m);
    return distances_impl(m, resolve_threads(num_threads, m), nullptr, nullptr);
}

void corner_code_map(const MaskPair& m, bool of_pred, uint8_t* out) {
    check(m);
    const int64_t m0 = m.ndim == 3 ? m.shape[0] + 1 : 1, m1 = m.shape[1] + 1, m2 = m.shape[2] + 1;
    const uint8_t* mask = of_pred ? m.pred : m.gt;
    for (int64_t c0 = 0; c0 < m0; ++c0)
        for (int64_t c1 = 0; c1 < m1; ++c1)
            for (int64_t c2 = 0; c2 < m2; ++c2)
                out[(c0 * m1 + c1) * m2 + c2] =
                    corner_code(mask, m.shape[0], m.shape[1], m.shape[2], m.ndim, c0, c1, c2);
}

void surface_dice_areas_plain(const MaskPair& m, const double* tolerances_mm, int n_tolerances, double* out) {
    check(m);
    const int64_t m0 = m.ndim == 3 ? m.shape[0] + 1 : 1, m1 = m.shape[1] + 1, m2 = m.shape[2] + 1;
    std::vector<uint8_t> codes[2];
    for (int w = 0; w < 2; ++w) {
        codes[w].resize(static_cast<size_t>(m0 * m1 * m2));
        corner_code_map(m, w == 1, codes[w].data());
    }
    double areas[256];
    area_table(m, areas);
    for (int t = 0; t < n_tolerances; ++t) {
        const auto st = corner_stencil(m.ndim, m.spacing_mm, tolerances_mm[t], kMaxStencilOffsets);
        if (st.empty()) throw std::invalid_argument("tolerance_mm too large for a stencil");
        std::vector<CornerOffset> offs;
        for (const auto& o : st)
            offs.push_back({static_cast<int>(o[0]), static_cast<int>(o[1]), static_cast<int>(o[2])});
        std::vector<int64_t> hist(1024, 0);
        for (int64_t i = 0; i < m0 * m1 * m2; ++i) {
            const int64_t c2 = i % m2, c1 = (i / m2) % m1, c0 = i / (m1 * m2);
            for (int side = 0; side < 2; ++side) {
                const uint8_t code = codes[side][i];
                if (!is_surfel(code, m.ndim)) continue;
                ++hist[512 * side + code];
                if (stencil_hit(codes[1 - side].data(), m0, m1, m2, m.ndim, c0, c1, c2, offs.data(),
                                static_cast<int>(offs.size())))
                    ++hist[512 * side + 256 + code];
            }
        }
        areas_from_counts(hist.data(), areas, out + 4 * t);
    }
}

}  // namespace fewshot_da

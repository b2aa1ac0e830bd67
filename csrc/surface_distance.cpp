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


// ---- streaming stencil path: corner planes are built into a small ring buffer per thread (2r+1 planes
// of codes for each mask) and queried while still in cache, so each mask is read from memory once.

// Surfels among 8 packed codes (one byte each): a code is a surfel unless all its bits agree.
inline uint64_t surfel_bytes(uint64_t w, int ndim) {
    const uint64_t z = w ^ (w >> 1);
    return z & (ndim == 3 ? 0x7F7F7F7F7F7F7F7FULL : 0x0707070707070707ULL);
}

// Inclusive index range of the nonzero voxels of a row (empty: lo > hi).
struct Extent {
    int64_t lo, hi;
};

// Fills out[i1] for every row of voxel plane i0; returns the OR of all its bytes (values other than 0/1
// mean the mask needs the general "nonzero" test when codes are built).
uint8_t row_extents(const uint8_t* mask, const MaskPair& m, int64_t i0, Extent* out) {
    const int64_t n1 = m.shape[1], n2 = m.shape[2];
    uint8_t plane_or = 0;
    for (int64_t i1 = 0; i1 < n1; ++i1) {
        const uint8_t* row = mask + (i0 * n1 + i1) * n2;
        uint8_t acc = 0;
        for (int64_t k = 0; k < n2; ++k) acc |= row[k];  // vectorised; most rows are empty
        plane_or |= acc;
        if (!acc) {
            out[i1] = {1, 0};
            continue;
        }
        int64_t lo = 0, hi = n2 - 1;
        for (; lo + 8 <= n2; lo += 8) {
            uint64_t w;
            std::memcpy(&w, row + lo, 8);
            if (w) break;
        }
        while (!row[lo]) ++lo;
        for (; hi - 7 > lo; hi -= 8) {
            uint64_t w;
            std::memcpy(&w, row + hi - 7, 8);
            if (w) break;
        }
        while (!row[hi]) --hi;
        out[i1] = {lo, hi};
    }
    return plane_or;
}

struct Ring {
    int64_t p1, p2, r1, r2, slots, stride;  // padded plane dims, margins, ring size, bytes per plane
    std::vector<uint8_t> codes[2];          // gt, pred
    std::vector<Extent> written[2];         // per slot and corner row: range that may hold nonzero codes
    std::vector<int64_t> slot_plane;        // corner plane held by each slot (-1: none)
};

// Builds corner plane c0 of one mask into its ring slot. lower/upper: voxel row extents of voxel planes
// c0 - 1 and c0 (nullptr = outside the array); in 2D `upper` holds the image's rows.
void build_plane(const uint8_t* mask, const MaskPair& m, int64_t c0, const Extent* lower, const Extent* upper,
                 bool binary, Ring& ring, int which) {
    const int64_t n1 = m.shape[1], n2 = m.shape[2], m1 = n1 + 1;
    const int64_t slot = c0 % ring.slots;
    uint8_t* plane = ring.codes[which].data() + slot * ring.stride;
    Extent* written = ring.written[which].data() + slot * ring.p1;
    const int nrows = m.ndim == 3 ? 4 : 2;
    for (int64_t c1 = 0; c1 < m1; ++c1) {
        const uint8_t* src[4];
        int64_t lo = n2, hi = -1;
        for (int k = 0; k < nrows; ++k) {
            const int64_t v1 = m.ndim == 3 ? c1 - 1 + (k & 1) : c1 - 1 + k;
            const int64_t v0 = m.ndim == 3 ? c0 - 1 + (k >> 1) : 0;
            const Extent* ext = m.ndim == 3 ? ((k >> 1) ? upper : lower) : upper;
            src[k] = mask + (v0 * n1 + v1) * n2;
            if (ext == nullptr || v1 < 0 || v1 >= n1 || ext[v1].lo > ext[v1].hi) {
                src[k] = nullptr;
                continue;
            }
            lo = std::min(lo, ext[v1].lo), hi = std::max(hi, ext[v1].hi);
        }
        const int64_t row = c1 + ring.r1;
        uint8_t* out = plane + row * ring.p2 + ring.r2;
        Extent& old = written[row];
        if (old.lo <= old.hi) std::memset(out + old.lo, 0, static_cast<size_t>(old.hi - old.lo + 1));
        if (hi < 0) {
            old = {1, 0};
            continue;
        }
        // corner k sits between voxels k - 1 and k: codes can be nonzero on corners lo .. hi + 1
        old = {lo, hi + 1};
        auto at = [&](int k, int64_t v) -> uint8_t {
            return (src[k] == nullptr || v < 0 || v >= n2) ? 0 : src[k][v];
        };
        // edge corners with bounds checks, the interior corners vectorised
        const int64_t first = std::max<int64_t>(lo, 1), last = std::min<int64_t>(hi + 1, n2 - 1);
        auto edge = [&](int64_t k) {
            if (m.ndim == 3)
                out[k] = code_3d(pair_bits(at(0, k - 1), at(0, k)), pair_bits(at(1, k - 1), at(1, k)),
                                 pair_bits(at(2, k - 1), at(2, k)), pair_bits(at(3, k - 1), at(3, k)));
            else
                out[k] = code_2d(pair_bits(at(0, k - 1), at(0, k)), pair_bits(at(1, k - 1), at(1, k)));
        };
        if (lo == 0) edge(0);
        if (hi + 1 == n2) edge(n2);
        if (first > last) continue;
        // rows outside the mask read as zeros from a shared zero row of the same length
        static thread_local std::vector<uint8_t> zeros;
        if (static_cast<int64_t>(zeros.size()) < n2) zeros.assign(static_cast<size_t>(n2), 0);
        const uint8_t* r[4];
        for (int k = 0; k < nrows; ++k) r[k] = src[k] ? src[k] : zeros.data();
        if (m.ndim == 3 && binary) {
            // 0/1 voxels: the code is a plain weighted sum, which vectorises to a few shifts and ORs
            const uint8_t *a = r[0], *b = r[1], *c = r[2], *d = r[3];
            for (int64_t k = first; k <= last; ++k)
                out[k] = static_cast<uint8_t>((a[k - 1] << 7) | (a[k] << 6) | (b[k - 1] << 5) | (b[k] << 4) |
                                              (c[k - 1] << 3) | (c[k] << 2) | (d[k - 1] << 1) | d[k]);
        } else if (m.ndim == 3) {
            const uint8_t *a = r[0], *b = r[1], *c = r[2], *d = r[3];
            for (int64_t k = first; k <= last; ++k)
                out[k] = code_3d(pair_bits(a[k - 1], a[k]), pair_bits(b[k - 1], b[k]), pair_bits(c[k - 1], c[k]),
                                 pair_bits(d[k - 1], d[k]));
        } else {
            const uint8_t *a = r[0], *b = r[1];
            for (int64_t k = first; k <= last; ++k)
                out[k] = code_2d(pair_bits(a[k - 1], a[k]), pair_bits(b[k - 1], b[k]));
        }
    }
    ring.slot_plane[slot] = c0;
}

// Surfel counts per code for every stencil: hist[t] = [gt total, gt within, pred total, pred within] x 256.
void stencil_counts(const MaskPair& m, const std::vector<std::vector<std::array<int64_t, 3>>>& stencils, int threads,
                    std::vector<std::vector<int64_t>>& hist) {
    const int64_t n0 = m.shape[0], n1 = m.shape[1], n2 = m.shape[2];
    const int64_t m0 = m.ndim == 3 ? n0 + 1 : 1, m1 = n1 + 1, m2 = n2 + 1;
    int64_t r[3] = {0, 0, 0};
    for (const auto& st : stencils)
        for (const auto& o : st)
            for (int a = 0; a < 3; ++a) r[a] = std::max(r[a], std::abs(o[a]));
    const int ntol = static_cast<int>(stencils.size());
    const int ndim = m.ndim;
    const int nthreads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, m0)));
    const int64_t chunk_planes = nthreads == 1 ? m0 : std::max<int64_t>(8, m0 / (4 * nthreads));
    const int64_t n_chunks = (m0 + chunk_planes - 1) / chunk_planes;
    // Plain threads rather than an OpenMP team: no spin-waiting workers, which on a shared machine steal the
    // core from the thread still working. Chunks are claimed from an atomic counter.
    std::atomic<int64_t> next_chunk{0};
    std::mutex merge;
    auto worker = [&]() {
        Ring ring;
        ring.r1 = r[1], ring.r2 = r[2];
        ring.p1 = m1 + 2 * r[1];
        ring.p2 = m2 + 2 * r[2] + 8;  // slack so 8-byte loads at the row end stay inside the row
        ring.slots = 2 * r[0] + 1;
        ring.stride = ring.p1 * ring.p2;
        for (int w = 0; w < 2; ++w) {
            ring.codes[w].assign(static_cast<size_t>(ring.slots * ring.stride), 0);
            ring.written[w].assign(static_cast<size_t>(ring.slots * ring.p1), Extent{1, 0});
        }
        ring.slot_plane.assign(static_cast<size_t>(ring.slots), -1);
        const std::vector<uint8_t> zero_plane(static_cast<size_t>(ring.stride), 0);
        // voxel row extents of the last two voxel planes, per mask
        std::vector<Extent> ext[2][2];
        int64_t ext_plane[2][2] = {{-2, -2}, {-2, -2}};
        uint8_t ext_or[2][2] = {{0, 0}, {0, 0}};
        for (int w = 0; w < 2; ++w)
            for (int k = 0; k < 2; ++k) ext[w][k].resize(static_cast<size_t>(n1));
        auto plane_extents = [&](int w, int64_t i0) -> const Extent* {
            if (i0 < 0 || i0 >= n0) return nullptr;
            for (int k = 0; k < 2; ++k)
                if (ext_plane[w][k] == i0) return ext[w][k].data();
            const int k = ext_plane[w][0] < ext_plane[w][1] ? 0 : 1;  // replace the older plane
            ext_or[w][k] = row_extents(w == 0 ? m.gt : m.pred, m, i0, ext[w][k].data());
            ext_plane[w][k] = i0;
            return ext[w][k].data();
        };
        auto ensure = [&](int64_t c0) {
            if (c0 < 0 || c0 >= m0 || ring.slot_plane[c0 % ring.slots] == c0) return;
            for (int w = 0; w < 2; ++w) {
                const uint8_t* mask = w == 0 ? m.gt : m.pred;
                const Extent* lower = ndim == 3 ? plane_extents(w, c0 - 1) : nullptr;
                const Extent* upper = plane_extents(w, ndim == 3 ? c0 : 0);
                const bool binary = ((ext_or[w][0] | ext_or[w][1]) & 0xFE) == 0;
                build_plane(mask, m, c0, lower, upper, binary, ring, w);
            }
        };
        std::vector<int64_t> h(static_cast<size_t>(ntol) * 1024, 0);
        // per tolerance, per stencil offset: the code plane it lands in, shifted by its in-plane offset
        std::vector<int64_t> first_offset(ntol + 1, 0);
        for (int t = 0; t < ntol; ++t) first_offset[t + 1] = first_offset[t] + static_cast<int64_t>(stencils[t].size());
        std::vector<const uint8_t*> look_gt(first_offset[ntol]), look_pred(first_offset[ntol]);
        // contiguous chunks of planes, handed out dynamically (the object rarely fills the array evenly);
        // each chunk first rebuilds the r0 planes before it
        for (int64_t chunk = next_chunk++; chunk < n_chunks; chunk = next_chunk++) {
            const int64_t begin = chunk * chunk_planes, end = std::min(m0, begin + chunk_planes);
            for (int64_t c0 = std::max<int64_t>(0, begin - r[0]); c0 < std::min(m0, begin + r[0]); ++c0) ensure(c0);
            for (int64_t c0 = begin; c0 < end; ++c0) {
                ensure(c0 + r[0]);
                const int64_t slot = c0 % ring.slots;
                for (int t = 0; t < ntol; ++t) {
                    for (size_t j = 0; j < stencils[t].size(); ++j) {
                        const auto& o = stencils[t][j];
                        const int64_t p = c0 + o[0];
                        const int64_t shift = o[1] * ring.p2 + o[2];
                        const bool inside = p >= 0 && p < m0;
                        const int64_t at = (p % ring.slots) * ring.stride;
                        const int64_t j_all = first_offset[t] + static_cast<int64_t>(j);
                        look_gt[j_all] = (inside ? ring.codes[0].data() + at : zero_plane.data()) + shift;
                        look_pred[j_all] = (inside ? ring.codes[1].data() + at : zero_plane.data()) + shift;
                    }
                }
                const uint8_t* gplane = ring.codes[0].data() + slot * ring.stride;
                const uint8_t* pplane = ring.codes[1].data() + slot * ring.stride;
                const Extent* gw = ring.written[0].data() + slot * ring.p1;
                const Extent* pw = ring.written[1].data() + slot * ring.p1;
                for (int64_t c1 = 0; c1 < m1; ++c1) {
                    const int64_t row = c1 + ring.r1;
                    const int64_t lo = std::min(gw[row].lo, pw[row].lo), hi = std::max(gw[row].hi, pw[row].hi);
                    if (lo > hi) continue;
                    const int64_t row_base = row * ring.p2 + ring.r2;
                    // bytes past `hi` are zero codes (never surfels), so whole words can be read
                    for (int64_t k0 = lo; k0 <= hi; k0 += 8) {
                        uint64_t wg, wp;
                        std::memcpy(&wg, gplane + row_base + k0, 8);
                        std::memcpy(&wp, pplane + row_base + k0, 8);
                        const uint64_t sg = surfel_bytes(wg, ndim), sp = surfel_bytes(wp, ndim);
                        uint64_t any = sg | sp;
                        while (any) {
                            const int shift = __builtin_ctzll(any) & ~7;
                            any &= ~(0xFFULL << shift);
                            const int64_t pos = row_base + k0 + (shift >> 3);
                            const uint8_t gc = static_cast<uint8_t>(wg >> shift);
                            const uint8_t pc = static_cast<uint8_t>(wp >> shift);
                            const bool gsurf = (sg >> shift) & 0xFF, psurf = (sp >> shift) & 0xFF;
                            for (int t = 0; t < ntol; ++t) {
                                int64_t* ht = h.data() + 1024 * t;
                                // a surfel of both masks on the same corner is at distance 0 from the other
                                if (gsurf && psurf) {
                                    ++ht[gc], ++ht[256 + gc], ++ht[512 + pc], ++ht[768 + pc];
                                    continue;
                                }
                                const uint8_t* const* look = gsurf ? look_pred.data() : look_gt.data();
                                const int base = gsurf ? 0 : 512;
                                const uint8_t code = gsurf ? gc : pc;
                                ++ht[base + code];
                                for (int64_t j = first_offset[t]; j < first_offset[t + 1]; ++j)
                                    if (is_surfel(look[j][pos], ndim)) {
                                        ++ht[base + 256 + code];
                                        break;
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

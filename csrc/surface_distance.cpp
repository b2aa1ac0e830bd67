// Surface-distance core: union bounding box, bit-packed surfels, stencil tolerance queries and exact
// nearest-surfel distances (ring stencils + block grid). See surface_distance.h for the contract and surfel.h for the per-surfel rules.
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

#include "parallel.h"
#include "surfel.h"

// One 64-bit word of surface corners: corner bit b is on the surface when the 2 or 4 voxel rows around it (each
// seen at voxels b - 1 and b) are neither all inside nor all outside the mask.
static inline uint64_t surface_word(const uint64_t* const* rows, int nrows, int64_t wi) {
    uint64_t all = ~0ULL, one = 0;
    for (int k = 0; k < nrows; ++k) {
        const uint64_t upper = rows[k][wi];
        const uint64_t lower = (upper << 1) | (wi > 0 ? rows[k][wi - 1] >> 63 : 0);
        all &= upper & lower;
        one |= upper | lower;
    }
    return one & ~all;
}

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

// Inclusive bounding box of the union of both masks; false when both are empty.
struct Box {
    int64_t lo[3], hi[3];
};

bool union_bbox(const MaskPair& m, int threads, Box* box) {
    const int64_t n0 = m.shape[0], n1 = m.shape[1], n2 = m.shape[2];
    const int64_t rows = n0 * n1;
    int64_t lo[3] = {n0, n1, n2}, hi[3] = {-1, -1, -1};
    std::mutex merge;
    parallel_for(threads, rows, 4096, [&](int, int64_t begin, int64_t end) {
        int64_t tlo[3] = {n0, n1, n2}, thi[3] = {-1, -1, -1};
        for (int64_t r = begin; r < end; ++r) {
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
        const std::lock_guard<std::mutex> lock(merge);
        for (int a = 0; a < 3; ++a) lo[a] = std::min(lo[a], tlo[a]), hi[a] = std::max(hi[a], thi[a]);
    });
    if (hi[0] < 0) return false;
    for (int a = 0; a < 3; ++a) box->lo[a] = lo[a], box->hi[a] = hi[a];
    return true;
}

void area_table(const MaskPair& m, double table[256]) {
    std::fill(table, table + 256, 0.0);
    if (m.ndim == 3) surfel_areas_3d(m.spacing_mm, table);
    else surfel_areas_2d(m.spacing_mm + 1, table);
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
                        o[wi] = surface_word(rows, nrows, wi);
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


// ---- exact distances at surfels, without a distance transform. Both masks' crops are packed to bits and
// each corner row's surfels are found 64 at a time (as in the stencil path). A surfel's distance to the
// other surface is then the first offset of a "ring" stencil, sorted by distance and complete within its
// radius, that lands on a surfel of the other mask (64 surfels per word tested per offset, a word stops
// once all its surfels are resolved). Surfels with no hit inside the radius (~400 offsets) are farther away
// than it: they continue one by one through a larger ring (~8000 offsets), and the few beyond that (a false
// positive far away) ask a block grid of the other surface's surfels. Every distance is computed by
// offset_distance_mm from an integer corner offset, the formula SciPy's EDT ends with.

// Offsets (d0, d1, d2) with distance <= radius_mm, sorted by (distance, offset); about `target` of them.
struct RingStencil {
    std::vector<std::array<int32_t, 3>> offsets;
    std::vector<double> dist_mm;
    std::vector<int32_t> dist_rank;  // rank of dist_mm among the distinct distances
    int32_t n_ranks = 0;
    double radius_mm = 0;
    // per offset: index of its (d0, d1) in `rows`, and d2 as a word step q = floor(d2 / 64) and bit r = d2 mod 64
    std::vector<std::array<int32_t, 2>> rows;
    std::vector<int32_t> row_of, word_step, bit_shift;
    int32_t max_abs_d2 = 0;
};

RingStencil ring_stencil(const MaskPair& m, int64_t target) {
    const double* s = m.spacing_mm;
    const double pi = 3.14159265358979323846;
    RingStencil st;
    st.radius_mm = m.ndim == 3 ? std::cbrt(3.0 * static_cast<double>(target) * s[0] * s[1] * s[2] / (4.0 * pi))
                               : std::sqrt(static_cast<double>(target) * s[1] * s[2] / pi);
    int64_t r[3];
    for (int a = 0; a < 3; ++a)
        r[a] = (m.ndim == 2 && a == 0) ? 0 : static_cast<int64_t>(std::floor(st.radius_mm / s[a]));
    std::vector<std::pair<double, std::array<int32_t, 3>>> cand;
    for (int64_t d0 = -r[0]; d0 <= r[0]; ++d0)
        for (int64_t d1 = -r[1]; d1 <= r[1]; ++d1)
            for (int64_t d2 = -r[2]; d2 <= r[2]; ++d2) {
                const double d = offset_distance_mm(d0, d1, d2, s[0], s[1], s[2]);
                if (d <= st.radius_mm)
                    cand.push_back({d, {static_cast<int32_t>(d0), static_cast<int32_t>(d1), static_cast<int32_t>(d2)}});
            }
    std::sort(cand.begin(), cand.end());
    for (const auto& c : cand) {
        if (st.dist_mm.empty() || c.first != st.dist_mm.back()) ++st.n_ranks;
        st.offsets.push_back(c.second);
        st.dist_mm.push_back(c.first);
        st.dist_rank.push_back(st.n_ranks - 1);
        const std::array<int32_t, 2> row = {c.second[0], c.second[1]};
        const auto it = std::find(st.rows.begin(), st.rows.end(), row);
        st.row_of.push_back(static_cast<int32_t>(it - st.rows.begin()));
        if (it == st.rows.end()) st.rows.push_back(row);
        const int32_t d2 = c.second[2];
        const int32_t q = d2 >= 0 ? d2 / 64 : -((-d2 + 63) / 64);
        st.word_step.push_back(q);
        st.bit_shift.push_back(d2 - 64 * q);
        st.max_abs_d2 = std::max(st.max_abs_d2, std::abs(d2));
    }
    return st;
}

// Bit-packed crop of both masks: voxel rows (crop voxels, words per row) and corner-row surfel bits.
struct PackedSurfaces {
    Box box;
    int64_t v0 = 0, v1 = 0;      // voxel rows per crop: v0 planes (1 in 2D) x v1 rows
    int64_t m0 = 0, m1 = 0, m2 = 0, words = 0;  // corner grid of the crop; words per row
    std::vector<uint64_t> vox[2], surf[2];
    std::vector<uint8_t> vany[2], sany[2];
    std::vector<int64_t> first[2];  // output index of each corner row's first surfel; size m0 * m1 + 1
    std::vector<uint64_t> zero;

    const uint64_t* vrow(int w, int64_t i0, int64_t i1) const {
        if (i0 < 0 || i1 < 0 || i0 >= v0 || i1 >= v1 || !vany[w][i0 * v1 + i1]) return zero.data();
        return vox[w].data() + (i0 * v1 + i1) * words;
    }
    // the 4 (3D) or 2 (2D) voxel rows around corner row (c0, c1), in code bit order
    int rows_of(int w, int ndim, int64_t c0, int64_t c1, const uint64_t* rows[4]) const {
        if (ndim == 3) {
            rows[0] = vrow(w, c0 - 1, c1 - 1), rows[1] = vrow(w, c0 - 1, c1);
            rows[2] = vrow(w, c0, c1 - 1), rows[3] = vrow(w, c0, c1);
            return 4;
        }
        rows[0] = vrow(w, 0, c1 - 1), rows[1] = vrow(w, 0, c1);
        return 2;
    }
};

// False when both masks are empty.
bool pack_surfaces(const MaskPair& m, int threads, PackedSurfaces* p) {
    if (!union_bbox(m, threads, &p->box)) return false;
    const Box& b = p->box;
    const int64_t n1 = m.shape[1], n2 = m.shape[2], len = b.hi[2] - b.lo[2] + 1;
    p->v0 = m.ndim == 3 ? b.hi[0] - b.lo[0] + 1 : 1;
    p->v1 = b.hi[1] - b.lo[1] + 1;
    p->m0 = m.ndim == 3 ? p->v0 + 1 : 1;
    p->m1 = p->v1 + 1;
    p->m2 = len + 1;
    p->words = (p->m2 + 63) / 64;
    const int64_t words = p->words, vrows = p->v0 * p->v1, crows = p->m0 * p->m1;
    p->zero.assign(static_cast<size_t>(words), 0);
    for (int w = 0; w < 2; ++w) {
        p->vox[w].assign(static_cast<size_t>(vrows * words), 0);
        p->vany[w].assign(static_cast<size_t>(vrows), 0);
        p->surf[w].assign(static_cast<size_t>(crows * words), 0);
        p->sany[w].assign(static_cast<size_t>(crows), 0);
        p->first[w].assign(static_cast<size_t>(crows + 1), 0);
    }
    const int64_t lo0 = m.ndim == 3 ? b.lo[0] : 0;
    parallel_for(threads, 2 * vrows, 256, [&](int, int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int w = static_cast<int>(i / vrows);
            const int64_t r = i % vrows, i0 = r / p->v1, i1 = r % p->v1;
            uint64_t* out = p->vox[w].data() + r * words;
            pack_row((w == 0 ? m.gt : m.pred) + ((lo0 + i0) * n1 + b.lo[1] + i1) * n2 + b.lo[2], len, out, words);
            uint64_t acc = 0;
            for (int64_t k = 0; k < words; ++k) acc |= out[k];
            p->vany[w][r] = acc != 0;
        }
    });
    parallel_for(threads, 2 * crows, 256, [&](int, int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int w = static_cast<int>(i / crows);
            const int64_t r = i % crows;
            const uint64_t* rows[4];
            const int nrows = p->rows_of(w, m.ndim, r / p->m1, r % p->m1, rows);
            bool empty = true;
            for (int k = 0; k < nrows; ++k) empty &= rows[k] == p->zero.data();
            if (empty) continue;
            uint64_t* o = p->surf[w].data() + r * words;
            int64_t count = 0;
            for (int64_t wi = 0; wi < words; ++wi) {
                o[wi] = surface_word(rows, nrows, wi);
                count += __builtin_popcountll(o[wi]);
            }
            p->sany[w][r] = count != 0;
            p->first[w][r + 1] = count;
        }
    });
    for (int w = 0; w < 2; ++w)
        for (int64_t r = 0; r < crows; ++r) p->first[w][r + 1] += p->first[w][r];
    return true;
}

// Exact nearest-point queries for the few surfels beyond both rings: the other surface's surfels bucketed
// into blocks of 16^3 corners; a query visits the non-empty blocks in order of the lower bound of its
// distance to each block's box and stops once that bound exceeds the best distance found. Distances by
// offset_distance_mm; rounding is monotone, so a bound never exceeds the computed distance of a point
// in its block.
class CornerBlockGrid {
  public:
    CornerBlockGrid(const std::vector<std::array<int32_t, 3>>& points, const int64_t corners[3],
                    const double spacing_mm[3]) {
        for (int a = 0; a < 3; ++a) nb_[a] = (corners[a] + kBlock - 1) / kBlock, s_[a] = spacing_mm[a];
        std::vector<int64_t> start(static_cast<size_t>(nb_[0] * nb_[1] * nb_[2] + 1), 0);
        for (const auto& q : points) ++start[block_of(q) + 1];
        for (size_t b = 1; b < start.size(); ++b) start[b] += start[b - 1];
        points_.resize(points.size());
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (const auto& q : points) points_[static_cast<size_t>(fill[block_of(q)]++)] = q;
        for (int64_t b = 0; b + 1 < static_cast<int64_t>(start.size()); ++b)
            if (start[b + 1] > start[b]) blocks_.push_back({b, start[b], start[b + 1]});
    }
    // Squared distance (mm^2) to the nearest point; +inf when there are none.
    double nearest_sq(const std::array<int32_t, 3>& q, std::vector<std::pair<double, int64_t>>& order) const {
        order.clear();
        for (size_t i = 0; i < blocks_.size(); ++i) {
            const int64_t b = blocks_[i][0];
            const int64_t lo[3] = {b / (nb_[1] * nb_[2]) * kBlock, (b / nb_[2]) % nb_[1] * kBlock, b % nb_[2] * kBlock};
            double x[3];
            for (int a = 0; a < 3; ++a) {
                const int64_t gap = std::max<int64_t>({0, lo[a] - q[a], q[a] - (lo[a] + kBlock - 1)});
                x[a] = static_cast<double>(gap) * s_[a];
            }
            order.push_back({(x[0] * x[0] + x[1] * x[1]) + x[2] * x[2], static_cast<int64_t>(i)});
        }
        std::sort(order.begin(), order.end());
        double best = kInf;
        for (const auto& o : order) {
            if (o.first > best) break;
            const auto& blk = blocks_[static_cast<size_t>(o.second)];
            for (int64_t k = blk[1]; k < blk[2]; ++k) {
                const auto& p = points_[static_cast<size_t>(k)];
                const double x0 = static_cast<double>(p[0] - q[0]) * s_[0], x1 = static_cast<double>(p[1] - q[1]) * s_[1],
                             x2 = static_cast<double>(p[2] - q[2]) * s_[2];
                best = std::min(best, (x0 * x0 + x1 * x1) + x2 * x2);
            }
        }
        return best;
    }

  private:
    static constexpr int64_t kBlock = 16;
    int64_t nb_[3];
    double s_[3];
    std::vector<std::array<int32_t, 3>> points_;
    std::vector<std::array<int64_t, 3>> blocks_;  // {block id, first point, end}
    int64_t block_of(const std::array<int32_t, 3>& q) const {
        return ((q[0] / kBlock) * nb_[1] + q[1] / kBlock) * nb_[2] + q[2] / kBlock;
    }
};

// Per-surfel results of one direction (surfels of mask `side` to the other surface), raster order.
struct DirectedDistances {
    std::vector<double> dist_mm;
    std::vector<uint8_t> code;
    std::vector<int32_t> rank;  // first ring's distance rank, or -1 when answered beyond it
};

constexpr int64_t kRingOffsets = 400, kFarRingOffsets = 8000;

// Distances from every surfel of mask `side` to the nearest surfel of the other mask.
DirectedDistances directed_distances(const MaskPair& m, const PackedSurfaces& p, const RingStencil& st,
                                     const RingStencil& far_ring, int side, int threads) {
    const int other = 1 - side;
    const int64_t m0 = p.m0, m1 = p.m1, words = p.words, crows = m0 * m1;
    const int64_t n = p.first[side][crows];
    DirectedDistances out;
    out.dist_mm.assign(static_cast<size_t>(n), kInf);
    out.code.assign(static_cast<size_t>(n), 0);
    out.rank.assign(static_cast<size_t>(n), -1);
    const bool other_empty = p.first[other][crows] == 0;
    const int64_t n_off = static_cast<int64_t>(st.offsets.size());
    const int64_t n_rows = static_cast<int64_t>(st.rows.size());
    // the other surface's rows padded with zero words on both sides, so a shifted 64-bit window is two plain
    // loads (no bounds checks); rows outside the grid or without surfels read an all-zero padded row
    const int64_t pad = std::max(st.max_abs_d2, far_ring.max_abs_d2) / 64 + 2, stride = words + 2 * pad;
    std::vector<uint64_t> padded(static_cast<size_t>((crows + 1) * stride), 0);
    for (int64_t r = 0; r < crows; ++r)
        if (p.sany[other][r])
            std::copy(p.surf[other].data() + r * words, p.surf[other].data() + (r + 1) * words,
                      padded.data() + r * stride + pad);
    const uint64_t* zero_row = padded.data() + crows * stride + pad;
    std::vector<std::vector<std::pair<int64_t, std::array<int32_t, 3>>>> far(threads);
    parallel_for(threads, crows, 64, [&](int worker, int64_t begin, int64_t end) {
        auto& my_far = far[worker];
        std::vector<const uint64_t*> row_ptr(static_cast<size_t>(n_rows));
        for (int64_t r = begin; r < end; ++r) {
            if (!p.sany[side][r]) continue;
            const int64_t c0 = r / m1, c1 = r % m1;
            for (int64_t k = 0; k < n_rows; ++k) {
                const int64_t p0 = c0 + st.rows[k][0], p1 = c1 + st.rows[k][1];
                const bool inside = p0 >= 0 && p1 >= 0 && p0 < m0 && p1 < m1 && p.sany[other][p0 * m1 + p1];
                row_ptr[k] = inside ? padded.data() + (p0 * m1 + p1) * stride + pad : zero_row;
            }
            const uint64_t* mine = p.surf[side].data() + r * words;
            const uint64_t* rows[4];
            const int nrows = p.rows_of(side, m.ndim, c0, c1, rows);
            int64_t idx = p.first[side][r];
            for (int64_t wi = 0; wi < words; ++wi) {
                const uint64_t s = mine[wi];
                if (!s) continue;
                uint64_t todo = s;
                for (int64_t k = idx; todo; ++k) {
                    const int64_t c2 = 64 * wi + __builtin_ctzll(todo);
                    todo &= todo - 1;
                    int code = 0;
                    for (int q = 0; q < nrows; ++q)
                        code = (code << 2) | (bit_of(rows[q], c2 - 1) << 1) | bit_of(rows[q], c2);
                    out.code[k] = static_cast<uint8_t>(code);
                }
                uint64_t unresolved = other_empty ? 0 : s;
                for (int64_t j = 0; j < n_off && unresolved; ++j) {
                    // bits [64 wi + d2, 64 wi + d2 + 64) of the other surface's row at (d0, d1)
                    const uint64_t* row = row_ptr[st.row_of[j]] + wi + st.word_step[j];
                    const int sh = st.bit_shift[j];
                    const uint64_t window = (row[0] >> sh) | ((row[1] << 1) << (63 - sh));
                    const uint64_t hit = window & unresolved;
                    if (!hit) continue;
                    unresolved &= ~hit;
                    for (uint64_t h = hit; h;) {
                        const int b = __builtin_ctzll(h);
                        h &= h - 1;
                        const int64_t k = idx + __builtin_popcountll(s & ((1ULL << b) - 1));
                        out.dist_mm[k] = st.dist_mm[j];
                        out.rank[k] = st.dist_rank[j];
                    }
                }
                for (uint64_t h = unresolved; h;) {
                    const int b = __builtin_ctzll(h);
                    h &= h - 1;
                    const int64_t k = idx + __builtin_popcountll(s & ((1ULL << b) - 1));
                    my_far.push_back({k, {static_cast<int32_t>(c0), static_cast<int32_t>(c1),
                                          static_cast<int32_t>(64 * wi + b)}});
                }
                idx += __builtin_popcountll(s);
            }
        }
    });
    std::vector<std::pair<int64_t, std::array<int32_t, 3>>> queries;
    for (auto& f : far) queries.insert(queries.end(), f.begin(), f.end());
    if (queries.empty()) return out;
    // beyond the first ring: one surfel at a time through the far ring's offsets past the first ring's radius
    // (nothing nearer exists), testing single bits; these distances are sorted, not ranked (rank -1)
    const int64_t far_begin = std::upper_bound(far_ring.dist_mm.begin(), far_ring.dist_mm.end(), st.radius_mm) -
                              far_ring.dist_mm.begin();
    const int64_t far_end = static_cast<int64_t>(far_ring.offsets.size());
    std::vector<uint8_t> found(queries.size(), 0);
    parallel_for(threads, static_cast<int64_t>(queries.size()), 64, [&](int, int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const auto& q = queries[i].second;
            for (int64_t j = far_begin; j < far_end; ++j) {
                const auto& o = far_ring.offsets[j];
                const int64_t p0 = q[0] + o[0], p1 = q[1] + o[1];
                if (p0 < 0 || p1 < 0 || p0 >= m0 || p1 >= m1 || !p.sany[other][p0 * m1 + p1]) continue;
                const int64_t c2 = q[2] + o[2];
                const uint64_t* row = padded.data() + (p0 * m1 + p1) * stride + pad;
                if ((row[c2 >> 6] >> (c2 & 63)) & 1) {
                    out.dist_mm[queries[i].first] = far_ring.dist_mm[j];
                    found[i] = 1;
                    break;
                }
            }
        }
    });
    std::vector<std::pair<int64_t, std::array<int32_t, 3>>> farther;
    for (size_t i = 0; i < queries.size(); ++i)
        if (!found[i]) farther.push_back(queries[i]);
    if (farther.empty()) return out;
    // beyond both rings: exact nearest surfel from a block grid of the other surface
    std::vector<std::array<int32_t, 3>> points;
    points.reserve(static_cast<size_t>(p.first[other][crows]));
    for (int64_t r = 0; r < crows; ++r) {
        if (!p.sany[other][r]) continue;
        const uint64_t* row = p.surf[other].data() + r * words;
        for (int64_t wi = 0; wi < words; ++wi)
            for (uint64_t h = row[wi]; h; h &= h - 1)
                points.push_back({static_cast<int32_t>(r / m1), static_cast<int32_t>(r % m1),
                                  static_cast<int32_t>(64 * wi + __builtin_ctzll(h))});
    }
    const int64_t corners[3] = {m0, m1, p.m2};
    const CornerBlockGrid grid(points, corners, m.spacing_mm);
    parallel_for(threads, static_cast<int64_t>(farther.size()), 16, [&](int, int64_t begin, int64_t end) {
        std::vector<std::pair<double, int64_t>> order;
        for (int64_t i = begin; i < end; ++i)
            out.dist_mm[farther[i].first] = std::sqrt(grid.nearest_sq(farther[i].second, order));
    });
    return out;
}

// Foreground voxel counts of the packed crops (everything outside the crop is background in both masks).
VoxelCounts packed_counts(const PackedSurfaces& p, int threads) {
    VoxelCounts total;
    std::mutex merge;
    parallel_for(threads, p.v0 * p.v1, 1024, [&](int, int64_t begin, int64_t end) {
        VoxelCounts c;
        for (int64_t r = begin; r < end; ++r) {
            if (!p.vany[0][r] && !p.vany[1][r]) continue;
            const uint64_t* a = p.vox[0].data() + r * p.words;
            const uint64_t* b = p.vox[1].data() + r * p.words;
            for (int64_t k = 0; k < p.words; ++k) {
                c.gt += __builtin_popcountll(a[k]);
                c.pred += __builtin_popcountll(b[k]);
                c.both += __builtin_popcountll(a[k] & b[k]);
            }
        }
        const std::lock_guard<std::mutex> lock(merge);
        total.gt += c.gt, total.pred += c.pred, total.both += c.both;
    });
    return total;
}

// Both directions; false when both masks are empty. `counts` (optional) gets the voxel counts.
bool both_directions(const MaskPair& m, int threads, DirectedDistances* gt_to_pred, DirectedDistances* pred_to_gt,
                     RingStencil* ring, VoxelCounts* counts = nullptr) {
    PackedSurfaces p;
    if (!pack_surfaces(m, threads, &p)) return false;
    if (counts) *counts = packed_counts(p, threads);
    *ring = ring_stencil(m, kRingOffsets);
    const RingStencil far_ring = ring_stencil(m, kFarRingOffsets);
    *gt_to_pred = directed_distances(m, p, *ring, far_ring, 0, threads);
    *pred_to_gt = directed_distances(m, p, *ring, far_ring, 1, threads);
    return true;
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
    std::vector<int> stencil_tol, exact_tol;
    for (int t = 0; t < n_tolerances; ++t) {
        if (!(tolerances_mm[t] >= 0)) throw std::invalid_argument("tolerance_mm must be >= 0");
        auto st = corner_stencil(m.ndim, m.spacing_mm, tolerances_mm[t], kMaxStencilOffsets);
        if (st.empty()) exact_tol.push_back(t);
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
    if (!exact_tol.empty()) {
        // tolerances too wide for a stencil: threshold exact distances instead
        std::vector<uint8_t> gt_codes, pred_codes;
        const SurfaceDistanceArrays d = distances_impl(m, threads, &gt_codes, &pred_codes);
        for (int t : exact_tol) {
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

// Exact distances (see surface_distances); optionally also each surfel's code.
SurfaceDistanceArrays distances_impl(const MaskPair& m, int threads, std::vector<uint8_t>* gt_codes,
                                     std::vector<uint8_t>* pred_codes) {
    SurfaceDistanceArrays res;
    DirectedDistances g, p;
    RingStencil ring;
    if (!both_directions(m, threads, &g, &p, &ring)) return res;
    double areas[256];
    area_table(m, areas);
    res.gt_to_pred_mm = std::move(g.dist_mm);
    res.pred_to_gt_mm = std::move(p.dist_mm);
    res.gt_areas_mm2.resize(g.code.size());
    res.pred_areas_mm2.resize(p.code.size());
    for (size_t k = 0; k < g.code.size(); ++k) res.gt_areas_mm2[k] = areas[g.code[k]];
    for (size_t k = 0; k < p.code.size(); ++k) res.pred_areas_mm2[k] = areas[p.code[k]];
    if (gt_codes) *gt_codes = std::move(g.code);
    if (pred_codes) *pred_codes = std::move(p.code);
    return res;
}

// DeepMind's robust percentile of one direction: surfels sorted by (distance, area), the distance of the
// first whose cumulative area (summed in that order) over the total reaches percent / 100. A counting
// sort: ring-stencil distances by rank, areas by value; only distances beyond the first ring are sorted.
double percentile_mm(const DirectedDistances& d, const double areas[256], const RingStencil& ring, double percent) {
    const size_t n = d.dist_mm.size();
    if (n == 0) return std::numeric_limits<double>::quiet_NaN();
    std::vector<double> values(areas, areas + 256);
    std::sort(values.begin(), values.end());
    values.erase(std::unique(values.begin(), values.end()), values.end());
    const int64_t na = static_cast<int64_t>(values.size());
    int32_t area_rank[256];
    for (int c = 0; c < 256; ++c)
        area_rank[c] = static_cast<int32_t>(std::lower_bound(values.begin(), values.end(), areas[c]) - values.begin());
    std::vector<double> rank_dist(static_cast<size_t>(ring.n_ranks), 0.0);
    for (size_t j = 0; j < ring.offsets.size(); ++j) rank_dist[ring.dist_rank[j]] = ring.dist_mm[j];
    std::vector<int64_t> counts(static_cast<size_t>(ring.n_ranks * na), 0);
    std::vector<std::pair<double, double>> far;
    for (size_t k = 0; k < n; ++k) {
        if (d.rank[k] >= 0) ++counts[static_cast<size_t>(d.rank[k] * na + area_rank[d.code[k]])];
        else far.push_back({d.dist_mm[k], areas[d.code[k]]});
    }
    std::sort(far.begin(), far.end());
    // pass 0 sums the total, pass 1 finds the first cumulative fraction >= percent / 100
    double total = 0.0;
    const double target = percent / 100.0;
    for (int pass = 0; pass < 2; ++pass) {
        double cum = 0.0;
        for (int64_t r = 0; r < ring.n_ranks; ++r)
            for (int64_t a = 0; a < na; ++a)
                for (int64_t c = counts[static_cast<size_t>(r * na + a)]; c > 0; --c) {
                    cum += values[a];
                    if (pass == 1 && cum / total >= target) return rank_dist[r];
                }
        for (const auto& f : far) {
            cum += f.second;
            if (pass == 1 && cum / total >= target) return f.first;
        }
        total = cum;
    }
    return far.empty() ? rank_dist[ring.n_ranks - 1] : far.back().first;  // never reached below 100 %
}

}  // namespace

namespace {

DistanceSummary summarize_directions(const DirectedDistances& g, const DirectedDistances& p, const RingStencil& ring,
                                     const double areas[256], double percent) {
    DistanceSummary s;
    s.n_gt = static_cast<int64_t>(g.code.size());
    s.n_pred = static_cast<int64_t>(p.code.size());
    for (size_t k = 0; k < g.code.size(); ++k) {
        s.gt_area_mm2 += areas[g.code[k]];
        s.gt_weighted_mm3 += g.dist_mm[k] * areas[g.code[k]];
    }
    for (size_t k = 0; k < p.code.size(); ++k) {
        s.pred_area_mm2 += areas[p.code[k]];
        s.pred_weighted_mm3 += p.dist_mm[k] * areas[p.code[k]];
    }
    s.hd_gt_to_pred_mm = percentile_mm(g, areas, ring, percent);
    s.hd_pred_to_gt_mm = percentile_mm(p, areas, ring, percent);
    return s;
}

// Foreground voxel counts by one pass over both arrays.
VoxelCounts byte_counts(const MaskPair& m, int threads) {
    const int64_t n = m.shape[0] * m.shape[1] * m.shape[2];
    VoxelCounts total;
    std::mutex merge;
    parallel_for(threads, n, int64_t{1} << 20, [&](int, int64_t begin, int64_t end) {
        int64_t g = 0, p = 0, b = 0;
        for (int64_t i = begin; i < end; ++i) {
            const int x = m.gt[i] != 0, y = m.pred[i] != 0;
            g += x, p += y, b += x & y;
        }
        const std::lock_guard<std::mutex> lock(merge);
        total.gt += g, total.pred += p, total.both += b;
    });
    return total;
}

}  // namespace

DistanceSummary surface_distance_summary(const MaskPair& m, double percent, int num_threads) {
    check(m);
    DirectedDistances g, p;
    RingStencil ring;
    if (!both_directions(m, resolve_threads(num_threads, m), &g, &p, &ring)) return DistanceSummary{};
    double areas[256];
    area_table(m, areas);
    return summarize_directions(g, p, ring, areas, percent);
}

CaseScores case_scores(const MaskPair& m, const double* tolerances_mm, int n_tolerances, bool with_distances,
                       double percent, int num_threads) {
    check(m);
    for (int t = 0; t < n_tolerances; ++t)
        if (!(tolerances_mm[t] >= 0)) throw std::invalid_argument("tolerance_mm must be >= 0");
    const int threads = resolve_threads(num_threads, m);
    CaseScores c;
    c.surface_dice_areas.assign(static_cast<size_t>(4 * std::max(0, n_tolerances)), 0.0);
    if (!with_distances) {
        c.voxels = byte_counts(m, threads);
        if (n_tolerances > 0)
            surface_dice_areas(m, tolerances_mm, n_tolerances, num_threads, c.surface_dice_areas.data());
        return c;
    }
    c.has_distances = true;
    DirectedDistances g, p;
    RingStencil ring;
    if (!both_directions(m, threads, &g, &p, &ring, &c.voxels)) return c;
    double areas[256];
    area_table(m, areas);
    c.distances = summarize_directions(g, p, ring, areas, percent);
    // surface Dice from the exact distances: the per-code counts the stencil would give, so the same areas
    for (int t = 0; t < n_tolerances; ++t) {
        std::vector<int64_t> hist(1024, 0);
        const double tol = tolerances_mm[t];
        for (size_t k = 0; k < g.code.size(); ++k) {
            ++hist[g.code[k]];
            if (g.dist_mm[k] <= tol) ++hist[256 + g.code[k]];
        }
        for (size_t k = 0; k < p.code.size(); ++k) {
            ++hist[512 + p.code[k]];
            if (p.dist_mm[k] <= tol) ++hist[768 + p.code[k]];
        }
        areas_from_counts(hist.data(), areas, c.surface_dice_areas.data() + 4 * t);
    }
    return c;
}

SurfaceDistanceArrays surface_distances(const MaskPair& m, int num_threads) {
    check(m);
    return distances_impl(m, resolve_threads(num_threads, m), nullptr, nullptr);
}

void fortran_to_c_order(const uint8_t* f, int64_t n0, int64_t n1, int64_t n2, uint8_t* c) {
    // element (i0, i1, i2) is f[i0 + n0 * (i1 + n1 * i2)] and c[(i0 * n1 + i1) * n2 + i2]
    // tiles of 128 (i0, contiguous reads) x 8 (i2, contiguous writes): reads stride n0 * n1 bytes along i2,
    // often a power of two, so a few lines per tile keep clear of cache-set conflicts (64 x 64: 5x slower)
    constexpr int64_t kTile0 = 128, kTile2 = 8;
    for (int64_t i1 = 0; i1 < n1; ++i1)
        for (int64_t a0 = 0; a0 < n0; a0 += kTile0)
            for (int64_t a2 = 0; a2 < n2; a2 += kTile2) {
                const int64_t e0 = std::min(n0, a0 + kTile0), e2 = std::min(n2, a2 + kTile2);
                for (int64_t i0 = a0; i0 < e0; ++i0) {
                    uint8_t* out = c + (i0 * n1 + i1) * n2;
                    const uint8_t* in = f + i0 + n0 * i1;
                    for (int64_t i2 = a2; i2 < e2; ++i2) out[i2] = in[n0 * n1 * i2];
                }
            }
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

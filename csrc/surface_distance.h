// Surface-distance metrics (DeepMind / Nikolov et al. semantics) for 2D and 3D binary masks with
// anisotropic spacing. Both masks are cropped to their union bounding box (+1 corner) first.
// - surface_dice_areas: a tolerance query only asks whether the other surface has a surfel within the
//   tolerance ball, answered with a fixed stencil of integer corner offsets: O(surfels * stencil).
// - surface_distances: exact directed distances without a distance transform: the nearest surfel of the
//   other surface is looked up at integer corner offsets in order of distance (64 surfels per word), up to
//   a radius of ~400 offsets, then ~8000 one surfel at a time; the few surfels farther away ask a block
//   grid of the other surface.
// Inputs are C-contiguous uint8 arrays (nonzero = foreground); 2D arrays are passed as shape (1, n0, n1)
// with ndim = 2. Results do not depend on num_threads (integer histograms, per-element outputs).
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

namespace fewshot_da {

struct MaskPair {
    const uint8_t* gt;
    const uint8_t* pred;
    int64_t shape[3];     // 2D: {1, n0, n1}
    int ndim;             // 2 or 3
    double spacing_mm[3];  // 2D: {1, s0, s1}
};

// Surfel area sums for each tolerance: out[4 * t + k] = {gt area within tolerance of pred, gt area,
// pred area within tolerance of gt, pred area} in mm^2 (mm in 2D).
void surface_dice_areas(const MaskPair& masks, const double* tolerances_mm, int n_tolerances,
                        int num_threads, double* out);

struct SurfaceDistanceArrays {
    std::vector<double> gt_to_pred_mm, pred_to_gt_mm, gt_areas_mm2, pred_areas_mm2;
};

// Distance from every surfel of one mask to the nearest surfel of the other (inf when the other mask is
// empty), with surfel areas; surfels in raster order of the corner grid.
SurfaceDistanceArrays surface_distances(const MaskPair& masks, int num_threads);

// What HD and ASSD need, without materialising per-surfel arrays: the directed `percent` percentiles
// (DeepMind's rule: sort by (distance, area), first cumulative area fraction >= percent / 100), and the
// area and area-weighted distance sums per surface. NaN / zeros for an empty surface; distances are inf
// when the other surface is empty.
struct DistanceSummary {
    double hd_gt_to_pred_mm = std::numeric_limits<double>::quiet_NaN();
    double hd_pred_to_gt_mm = std::numeric_limits<double>::quiet_NaN();
    double gt_area_mm2 = 0, gt_weighted_mm3 = 0, pred_area_mm2 = 0, pred_weighted_mm3 = 0;
    int64_t n_gt = 0, n_pred = 0;
};
DistanceSummary surface_distance_summary(const MaskPair& masks, double percent, int num_threads);

// Foreground voxel counts (nonzero) of each mask and of both.
struct VoxelCounts {
    int64_t gt = 0, pred = 0, both = 0;
};

// Everything one case's scores need, in one call: voxel counts (Dice, pixel error), surfel areas within
// each tolerance (as surface_dice_areas, out[4 * t + k]) and, when `with_distances`, the HD/ASSD
// summary. Without distances surface Dice takes the stencil path; with them it thresholds the exact
// distances (the same per-code counts, so the same areas) and the masks are read once.
struct CaseScores {
    bool has_distances = false;
    DistanceSummary distances;
    std::vector<double> surface_dice_areas;
    VoxelCounts voxels;
};
CaseScores case_scores(const MaskPair& masks, const double* tolerances_mm, int n_tolerances, bool with_distances,
                       double percent, int num_threads);

// C-order copy of a Fortran-order (column-major) uint8 array of C shape (n0, n1, n2), as NIfTI volumes are
// stored: tiled, so it runs at copy speed instead of striding through memory once per element.
void fortran_to_c_order(const uint8_t* f_order, int64_t n0, int64_t n1, int64_t n2, uint8_t* c_order);

// The CUDA kernel's algorithm run on the host, one corner at a time over the whole array (no crop, no ring
// buffer, no word skipping): same output as surface_dice_areas. Lets CPU-only tests check the per-surfel
// device logic (surfel.h) against the fast path.
void surface_dice_areas_plain(const MaskPair& masks, const double* tolerances_mm, int n_tolerances, double* out);

// Neighbour code of every corner, shape (n0 + 1, n1 + 1, n2 + 1) (2D: (1, n1 + 1, n2 + 1)), by corner_code().
void corner_code_map(const MaskPair& masks, bool of_pred, uint8_t* out);

}  // namespace fewshot_da

// Surface Dice on the GPU: the same corner codes, surfel test and tolerance stencil as the CPU core
// (csrc/surfel.h), one thread per corner, integer histograms per code, so the areas match the CPU
// result exactly. Masks are device buffers (uint8, C-contiguous, nonzero = foreground) given by pointer.
#pragma once

#include <string>

#include "surface_distance.h"

namespace fewshot_da {

// Same output layout as surface_dice_areas; `masks.gt` / `masks.pred` are device pointers. Returns an
// empty string on success, otherwise the CUDA error text (nothing is written to `out`).
std::string surface_dice_areas_cuda(const MaskPair& masks, const double* tolerances_mm, int n_tolerances,
                                    double* out);

// Number of visible CUDA devices; 0 when there is no driver or device.
int cuda_device_count();

}  // namespace fewshot_da

// The fewshot_da._core module: the metric and loader parts, each registered by its own file.
#include "bindings/bindings.h"

PYBIND11_MODULE(_core, m) {
    m.doc() = "fewshot-da compiled core: surface-distance kernels and the fused slice loader.";
    fewshot_da_bindings::register_metrics(m);
    fewshot_da_bindings::register_loader(m);
}

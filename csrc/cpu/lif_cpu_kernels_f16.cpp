// The fused LIF CPU kernels for c10::Half storage (see lif_cpu_kernels_impl.h).
#include "lif_cpu_kernels_impl.h"

namespace snn_fast {
namespace cpu_lif {
SNN_FAST_INSTANTIATE_LIF_CPU(c10::Half, float)
}  // namespace cpu_lif
}  // namespace snn_fast

// The fused batch-norm + LIF CPU kernels for c10::Half storage (see bn_lif_cpu_kernels_impl.h).
#include "bn_lif_cpu_kernels_impl.h"

namespace snn_fast {
namespace cpu_bn_lif {
SNN_FAST_INSTANTIATE_BN_LIF_CPU(c10::Half, float)
}  // namespace cpu_bn_lif
}  // namespace snn_fast

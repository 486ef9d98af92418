// Emulator stand-in for <ATen/cuda/CUDAContext.h> (see tests/cuda_emulator/simt.h):
// the current stream and device properties, as far as atss_core's kernels use them.
#pragma once

#include <ATen/ATen.h>

struct cudaDeviceProp {
  int multiProcessorCount;
};

namespace at {
namespace cuda {

struct EmulatedStream {
  operator cudaStream_t() const { return nullptr; }
};

inline EmulatedStream getCurrentCUDAStream() { return {}; }

inline cudaDeviceProp* getCurrentDeviceProperties() {
  static cudaDeviceProp properties;
  properties.multiProcessorCount = ::atss_emu::multiprocessor_count;
  return &properties;
}

}  // namespace cuda
}  // namespace at

// Launch errors are thrown by the emulator's launch itself.
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)

// Emulator stand-in for <ATen/cuda/Atomic.cuh>: fibers never interleave inside a
// statement, so a plain read-modify-write is atomic (tests/cuda_emulator/simt.h).
#pragma once

template <typename T>
inline T gpuAtomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

// IoU of two xyxy boxes with the reference "+1" width convention (used by the CUDA
// kernel; the CPU loop in cpu/nms_cpu.cpp spells out the same expression), evaluated in the
// same operation order on CPU and CUDA (no fused multiply-add) so both kernels
// and the pure-PyTorch fallback agree bit for bit.
#pragma once

#include <c10/macros/Macros.h>

namespace atss {

#if defined(__CUDA_ARCH__)
__device__ inline float mul_no_fma(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul_no_fma(double a, double b) { return __dmul_rn(a, b); }
#else
template <typename T>
inline T mul_no_fma(T a, T b) { return a * b; }
#endif

// a, b: pointers to (x1, y1, x2, y2).
template <typename T>
C10_HOST_DEVICE inline T box_iou_plus1(const T* a, const T* b) {
  const T area_a = mul_no_fma(a[2] - a[0] + T(1), a[3] - a[1] + T(1));
  const T area_b = mul_no_fma(b[2] - b[0] + T(1), b[3] - b[1] + T(1));
  const T left = a[0] > b[0] ? a[0] : b[0];
  const T top = a[1] > b[1] ? a[1] : b[1];
  const T right = a[2] < b[2] ? a[2] : b[2];
  const T bottom = a[3] < b[3] ? a[3] : b[3];
  T w = right - left + T(1);
  T h = bottom - top + T(1);
  w = w > T(0) ? w : T(0);
  h = h > T(0) ? h : T(0);
  const T inter = mul_no_fma(w, h);
  return inter / (area_a + area_b - inter);
}

}  // namespace atss

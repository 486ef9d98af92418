// Column primitives of modulated deformable convolution on CPU.
//
// The sampling geometry of one (image, deformable group, tap) over a block of
// output pixels is computed once into a SamplePoint block and reused by every
// channel of the group. Each parallel task owns the outputs it writes, so no
// atomics are needed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "../kernels.h"

namespace atss {

namespace {

constexpr int64_t kPixelBlock = 256;   // output pixels per SamplePoint block
constexpr int64_t kChannelChunk = 32;  // channels per col2im task

struct Block {
  int64_t b, g, k, begin, end;  // image, deformable group, tap, pixel range
};

// The sample points of one (image, deformable group, tap) over a block of output pixels.
template <typename T>
void plan_block(const T* offset, const DeformGeometry& geo, const Block& blk,
                SamplePoint<T>* points) {
  const int64_t K = geo.taps(), L = geo.out_size();
  const int64_t i = blk.k / geo.kernel_w, j = blk.k % geo.kernel_w;
  const T* off_y = offset + ((blk.b * geo.deformable_groups + blk.g) * 2 * K + 2 * blk.k) * L;
  const T* off_x = off_y + L;
  for (int64_t l = blk.begin; l < blk.end; ++l) {
    const int64_t y = l / geo.out_w, x = l % geo.out_w;
    points[l - blk.begin] = dcn_sample_point<T>(
        geo.height, geo.width, static_cast<T>(dcn_base_h(geo, y, i)) + off_y[l],
        static_cast<T>(dcn_base_w(geo, x, j)) + off_x[l]);
  }
}

// Splits (image, group, tap, pixel block) items for parallel_for.
struct BlockGrid {
  int64_t batch, groups, taps, pixels, blocks_per_row;
  BlockGrid(const DeformGeometry& geo, int64_t batch)
      : batch(batch), groups(geo.deformable_groups), taps(geo.taps()), pixels(geo.out_size()),
        blocks_per_row((geo.out_size() + kPixelBlock - 1) / kPixelBlock) {}
  int64_t size() const { return batch * groups * taps * blocks_per_row; }
  Block operator[](int64_t item) const {
    const int64_t block = item % blocks_per_row;
    const int64_t k = (item / blocks_per_row) % taps;
    const int64_t g = (item / (blocks_per_row * taps)) % groups;
    const int64_t b = item / (blocks_per_row * taps * groups);
    return {b, g, k, block * kPixelBlock, std::min(pixels, (block + 1) * kPixelBlock)};
  }
};

int64_t grain_for(int64_t cost) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(cost, 1)); }

}  // namespace

void deform_im2col_cpu(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                       const DeformGeometry& geo, int64_t batch, at::Tensor& columns) {
  const int64_t C = geo.channels, K = geo.taps(), L = geo.out_size();
  const int64_t cg = geo.group_channels(), plane = geo.height * geo.width;
  const BlockGrid grid(geo, batch);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "atss_deform_im2col_cpu", [&] {
    const scalar_t* in = input.data_ptr<scalar_t>();
    const scalar_t* off = offset.data_ptr<scalar_t>();
    const scalar_t* msk = mask.data_ptr<scalar_t>();
    scalar_t* col = columns.data_ptr<scalar_t>();
    at::parallel_for(0, grid.size(), grain_for(cg * kPixelBlock), [&](int64_t begin, int64_t end) {
      SamplePoint<scalar_t> points[kPixelBlock];
      for (int64_t item = begin; item < end; ++item) {
        const Block blk = grid[item];
        plan_block(off, geo, blk, points);
        const scalar_t* m = msk + ((blk.b * geo.deformable_groups + blk.g) * K + blk.k) * L;
        for (int64_t c = blk.g * cg; c < (blk.g + 1) * cg; ++c) {
          const scalar_t* im = in + (blk.b * C + c) * plane;
          scalar_t* out = col + (c * K + blk.k) * (batch * L) + blk.b * L;
          for (int64_t l = blk.begin; l < blk.end; ++l) {
            out[l] = dcn_sample_value(im, points[l - blk.begin]) * m[l];
          }
        }
      }
    });
  });
}

void deform_col2im_cpu(const at::Tensor& grad_columns, const at::Tensor& offset,
                       const at::Tensor& mask, const DeformGeometry& geo, int64_t batch,
                       at::Tensor& grad_input) {
  const int64_t C = geo.channels, K = geo.taps(), L = geo.out_size();
  const int64_t cg = geo.group_channels(), dg = geo.deformable_groups;
  const int64_t plane = geo.height * geo.width;
  const int64_t chunks = (cg + kChannelChunk - 1) / kChannelChunk;  // per group
  AT_DISPATCH_FLOATING_TYPES(grad_columns.scalar_type(), "atss_deform_col2im_cpu", [&] {
    const scalar_t* gcol = grad_columns.data_ptr<scalar_t>();
    const scalar_t* off = offset.data_ptr<scalar_t>();
    const scalar_t* msk = mask.data_ptr<scalar_t>();
    scalar_t* gin = grad_input.data_ptr<scalar_t>();
    // Work item: a chunk of channels of one (image, group); it owns their planes.
    at::parallel_for(0, batch * dg * chunks, 1, [&](int64_t begin, int64_t end) {
      SamplePoint<scalar_t> points[kPixelBlock];
      scalar_t scale[kPixelBlock];
      for (int64_t item = begin; item < end; ++item) {
        const int64_t chunk = item % chunks, g = (item / chunks) % dg, b = item / (chunks * dg);
        const int64_t c_begin = g * cg + chunk * kChannelChunk;
        const int64_t c_end = std::min((g + 1) * cg, c_begin + kChannelChunk);
        for (int64_t k = 0; k < K; ++k) {
          const scalar_t* m = msk + ((b * dg + g) * K + k) * L;
          for (int64_t l0 = 0; l0 < L; l0 += kPixelBlock) {
            const Block blk{b, g, k, l0, std::min(L, l0 + kPixelBlock)};
            plan_block(off, geo, blk, points);
            for (int64_t c = c_begin; c < c_end; ++c) {
              scalar_t* target = gin + (b * C + c) * plane;
              const scalar_t* src = gcol + (c * K + k) * (batch * L) + b * L;
              for (int64_t l = blk.begin; l < blk.end; ++l) scale[l - l0] = src[l] * m[l];
              for (int64_t l = blk.begin; l < blk.end; ++l) {
                const SamplePoint<scalar_t>& s = points[l - l0];
                const scalar_t gm = scale[l - l0];
                for (int e = 0; e < 4; ++e) {
                  if (s.inside[e] != scalar_t(0)) target[s.index[e]] += s.weight[e] * gm;
                }
              }
            }
          }
        }
      }
    });
  });
}

void deform_col2im_coord_cpu(const at::Tensor& grad_columns, const at::Tensor& input,
                             const at::Tensor& offset, const at::Tensor& mask,
                             const DeformGeometry& geo, int64_t batch, at::Tensor& grad_offset,
                             at::Tensor& grad_mask) {
  const int64_t C = geo.channels, K = geo.taps(), L = geo.out_size();
  const int64_t cg = geo.group_channels(), dg = geo.deformable_groups;
  const int64_t plane = geo.height * geo.width;
  const BlockGrid grid(geo, batch);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "atss_deform_col2im_coord_cpu", [&] {
    const scalar_t* gcol = grad_columns.data_ptr<scalar_t>();
    const scalar_t* in = input.data_ptr<scalar_t>();
    const scalar_t* off = offset.data_ptr<scalar_t>();
    const scalar_t* msk = mask.data_ptr<scalar_t>();
    scalar_t* goff = grad_offset.data_ptr<scalar_t>();
    scalar_t* gmsk = grad_mask.data_ptr<scalar_t>();
    at::parallel_for(0, grid.size(), grain_for(cg * kPixelBlock), [&](int64_t begin, int64_t end) {
      SamplePoint<scalar_t> points[kPixelBlock];
      scalar_t sum_h[kPixelBlock], sum_w[kPixelBlock], sum_m[kPixelBlock];
      for (int64_t item = begin; item < end; ++item) {
        const Block blk = grid[item];
        const int64_t n = blk.end - blk.begin;
        plan_block(off, geo, blk, points);
        std::fill(sum_h, sum_h + n, scalar_t(0));
        std::fill(sum_w, sum_w + n, scalar_t(0));
        std::fill(sum_m, sum_m + n, scalar_t(0));
        for (int64_t c = blk.g * cg; c < (blk.g + 1) * cg; ++c) {
          const scalar_t* im = in + (blk.b * C + c) * plane;
          const scalar_t* src = gcol + (c * K + blk.k) * (batch * L) + blk.b * L + blk.begin;
          for (int64_t t = 0; t < n; ++t) {
            scalar_t value, d_h, d_w;
            dcn_sample_with_grad(im, points[t], &value, &d_h, &d_w);
            sum_m[t] += src[t] * value;
            sum_h[t] += src[t] * d_h;
            sum_w[t] += src[t] * d_w;
          }
        }
        const int64_t base = (blk.b * dg + blk.g) * K + blk.k;
        const scalar_t* m = msk + base * L + blk.begin;
        scalar_t* g_y = goff + ((blk.b * dg + blk.g) * 2 * K + 2 * blk.k) * L + blk.begin;
        scalar_t* g_x = g_y + L;
        scalar_t* g_m = gmsk + base * L + blk.begin;
        for (int64_t t = 0; t < n; ++t) {
          g_y[t] = sum_h[t] * m[t];
          g_x[t] = sum_w[t] * m[t];
          g_m[t] = sum_m[t];
        }
      }
    });
  });
}

}  // namespace atss

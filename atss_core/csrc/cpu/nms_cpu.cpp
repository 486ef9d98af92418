// Greedy NMS on CPU (plain and class-wise), reference "+1" box convention.
//
// Boxes are stably sorted by descending score; a kept box suppresses the later
// boxes whose IoU with it is > the threshold (strictly, as the reference's CUDA
// kernel), and the kept indices are returned in ascending index order. Class-wise NMS splits them into
// one run per label (keeping score order inside each run) and handles the runs
// in parallel; plain NMS is a single run. Inside a run the suppression loop is
// branch-free over structure-of-arrays coordinates so that it vectorises.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "../kernels.h"

namespace atss {

namespace {

constexpr int64_t kParallelBoxes = 16384;

template <typename scalar_t>
struct BoxArrays {
  std::vector<scalar_t> x1, y1, x2, y2, area;

  // boxes: [n, 4] rows in the order the greedy pass visits them.
  BoxArrays(const scalar_t* boxes, int64_t n) : x1(n), y1(n), x2(n), y2(n), area(n) {
    for (int64_t i = 0; i < n; ++i) {
      x1[i] = boxes[4 * i];
      y1[i] = boxes[4 * i + 1];
      x2[i] = boxes[4 * i + 2];
      y2[i] = boxes[4 * i + 3];
      // Same expression as box_iou_plus1, so the IoU is the same number.
      area[i] = (x2[i] - x1[i] + scalar_t(1)) * (y2[i] - y1[i] + scalar_t(1));
    }
  }
};

// Greedy pass over boxes [begin, end) of `b`; sets keep[i] for the survivors.
template <typename scalar_t>
void greedy_run(const BoxArrays<scalar_t>& b, int64_t begin, int64_t end, scalar_t threshold,
                uint8_t* keep) {
  std::vector<uint8_t> removed(end - begin, 0);
  const scalar_t* x1 = b.x1.data();
  const scalar_t* y1 = b.y1.data();
  const scalar_t* x2 = b.x2.data();
  const scalar_t* y2 = b.y2.data();
  const scalar_t* area = b.area.data();
  uint8_t* rem = removed.data() - begin;
  for (int64_t i = begin; i < end; ++i) {
    if (rem[i]) continue;
    keep[i] = 1;
    const scalar_t ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], iarea = area[i];
    for (int64_t j = i + 1; j < end; ++j) {
      const scalar_t w = std::max(scalar_t(0), std::min(ix2, x2[j]) - std::max(ix1, x1[j]) + scalar_t(1));
      const scalar_t h = std::max(scalar_t(0), std::min(iy2, y2[j]) - std::max(iy1, y1[j]) + scalar_t(1));
      const scalar_t inter = w * h;
      rem[j] |= static_cast<uint8_t>(inter / (iarea + area[j] - inter) > threshold);
    }
  }
}

}  // namespace

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                   const c10::optional<at::Tensor>& labels, double iou_threshold) {
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  // score_order[p]: the box at position p of descending score order (ties: input order).
  const at::Tensor score_order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor visit = score_order;  // boxes in the order the greedy runs visit them
  std::vector<int64_t> run_starts = {0, n};
  if (labels.has_value()) {
    const at::Tensor positions = std::get<1>(
        labels->index_select(0, score_order).sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
    visit = score_order.index_select(0, positions);
    const at::Tensor grouped = labels->index_select(0, visit).contiguous();
    const int64_t* lab = grouped.data_ptr<int64_t>();
    run_starts = {0};
    for (int64_t i = 1; i < n; ++i) {
      if (lab[i] != lab[i - 1]) run_starts.push_back(i);
    }
    run_starts.push_back(n);
  }
  const at::Tensor visited = boxes.index_select(0, visit).contiguous();
  at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "atss_nms_cpu", [&] {
    const BoxArrays<scalar_t> arrays(visited.data_ptr<scalar_t>(), n);
    const scalar_t threshold = static_cast<scalar_t>(iou_threshold);
    uint8_t* keep_ptr = reinterpret_cast<uint8_t*>(keep.data_ptr<bool>());
    const int64_t runs = static_cast<int64_t>(run_starts.size()) - 1;
    // Small inputs take microseconds: not worth waking the thread pool.
    const int64_t grain = n < kParallelBoxes ? runs : 1;
    at::parallel_for(0, runs, grain, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        greedy_run(arrays, run_starts[r], run_starts[r + 1], threshold, keep_ptr);
      }
    });
  });
  // The kept boxes in ascending index order, as the reference's kernels return them.
  // A plain loop: index_put_ would run this O(n) scatter on the thread pool, which
  // costs milliseconds when the other cores are busy.
  at::Tensor by_index = at::zeros_like(keep);
  const at::Tensor visit_c = visit.contiguous();
  const int64_t* vis = visit_c.data_ptr<int64_t>();
  const bool* src = keep.data_ptr<bool>();
  bool* dst = by_index.data_ptr<bool>();
  for (int64_t i = 0; i < n; ++i) dst[vis[i]] = src[i];
  return by_index.nonzero().squeeze(1);
}

}  // namespace atss

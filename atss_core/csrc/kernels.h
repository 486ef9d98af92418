// Declarations of the device-specific kernels of atss_core._C.
// Registration with the dispatcher lives in vision.cpp.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include "deform_conv.h"

namespace atss {

// Greedy NMS, +1 box convention; labels (int64 [N]) given means class-wise NMS.
// boxes [N, 4] and scores [N] are contiguous and of the same floating dtype.
at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                   const c10::optional<at::Tensor>& labels, double iou_threshold);

// Element-wise sigmoid focal loss and its gradient w.r.t. logits.
at::Tensor sigmoid_focal_loss_forward_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                          double gamma, double alpha);
at::Tensor sigmoid_focal_loss_backward_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                           const at::Tensor& grad_loss, double gamma, double alpha);

// Deformable convolution column primitives for a chunk of `batch` images
// (tensors narrowed to the chunk, contiguous). Column layout:
// columns[(c * K + k), (b * L + l)] with K = kh * kw and L = ho * wo.
void deform_im2col_cpu(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                       const DeformGeometry& geo, int64_t batch, at::Tensor& columns);
// grad_input (dtype: accumulation type of the input) += scatter of grad_columns * mask.
void deform_col2im_cpu(const at::Tensor& grad_columns, const at::Tensor& offset,
                       const at::Tensor& mask, const DeformGeometry& geo, int64_t batch,
                       at::Tensor& grad_input);
// Writes grad_offset and grad_mask of the chunk.
void deform_col2im_coord_cpu(const at::Tensor& grad_columns, const at::Tensor& input,
                             const at::Tensor& offset, const at::Tensor& mask,
                             const DeformGeometry& geo, int64_t batch, at::Tensor& grad_offset,
                             at::Tensor& grad_mask);

#ifdef WITH_CUDA
at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                    const c10::optional<at::Tensor>& labels, double iou_threshold);
at::Tensor sigmoid_focal_loss_forward_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                           double gamma, double alpha);
at::Tensor sigmoid_focal_loss_backward_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                            const at::Tensor& grad_loss, double gamma,
                                            double alpha);
void deform_im2col_cuda(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                        const DeformGeometry& geo, int64_t batch, at::Tensor& columns);
void deform_col2im_cuda(const at::Tensor& grad_columns, const at::Tensor& offset,
                        const at::Tensor& mask, const DeformGeometry& geo, int64_t batch,
                        at::Tensor& grad_input);
void deform_col2im_coord_cuda(const at::Tensor& grad_columns, const at::Tensor& input,
                              const at::Tensor& offset, const at::Tensor& mask,
                              const DeformGeometry& geo, int64_t batch, at::Tensor& grad_offset,
                              at::Tensor& grad_mask);
#endif

// Device-agnostic drivers (deform_conv.cpp): column primitives + matmuls.
at::Tensor modulated_deform_conv_forward(const at::Tensor& input, const at::Tensor& offset,
                                         const at::Tensor& mask, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias,
                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef dilation, int64_t groups,
                                         int64_t deformable_groups);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> modulated_deform_conv_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t deformable_groups);

}  // namespace atss

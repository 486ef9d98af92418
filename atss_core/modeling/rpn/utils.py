"""Layout helpers shared by the loss and the post-processor."""
import torch


def permute_and_flatten(layer, N, A, K, H, W):
    """[N, A*K, H, W] -> [N, H*W*A, K]: one row per anchor, ordered by location
    (row-major y, x) then anchor, matching :class:`AnchorGenerator`."""
    return layer.view(N, A, K, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, K)


def concat_box_prediction_layers(box_cls, box_regression):
    """Lists over levels of [N, A*C, H, W] and [N, A*4, H, W] -> [N*R, C] and
    [N*R, 4], R the anchors of all levels (image-major, then level, location,
    anchor)."""
    cls_flat, reg_flat = [], []
    for cls, reg in zip(box_cls, box_regression):
        N, AxC, H, W = cls.shape
        A = reg.shape[1] // 4
        cls_flat.append(permute_and_flatten(cls, N, A, AxC // A, H, W))
        reg_flat.append(permute_and_flatten(reg, N, A, 4, H, W))
    C = cls_flat[0].shape[-1]
    return torch.cat(cls_flat, dim=1).reshape(-1, C), torch.cat(reg_flat, dim=1).reshape(-1, 4)

"""Default configuration of atss.

Every key that the reference ATSS configs use exists here with the reference's
meaning and default, so the published YAML files and command-line overrides
(``MODEL.WEIGHT x.pth``, ``TEST.IMS_PER_BATCH 4``, ...) work unchanged. Keys
marked "atss extension" are additions of this project; their defaults keep the
reference's behaviour.

Conventions: image sizes are in pixels of the resized network input; boxes are
xyxy in those pixels; class ids inside the model are contiguous 1..C with 0 for
background (``NUM_CLASSES`` counts the background).
"""
import os

from .config_node import ConfigNode as CN

_C = CN()

# --------------------------------------------------------------------------- #
# Model
# --------------------------------------------------------------------------- #
_C.MODEL = CN()
# Kept so that reference configs load; atss builds only the ATSS detector.
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
_C.MODEL.RPN_ONLY = False
_C.MODEL.MASK_ON = False
_C.MODEL.KEYPOINT_ON = False
_C.MODEL.ATSS_ON = False
_C.MODEL.FCOS_ON = False
_C.MODEL.RETINANET_ON = False
_C.MODEL.CLS_AGNOSTIC_BBOX_REG = False
_C.MODEL.USE_SYNCBN = False
# "cuda" or "cpu" ("cuda:1" also works for single-process runs).
_C.MODEL.DEVICE = "cuda"
# Path of a checkpoint, or a catalog:// name resolved to a local file (see
# atss_core/config/paths_catalog.py). Nothing is downloaded at run time.
_C.MODEL.WEIGHT = ""
# Channels-last (NHWC) weights and feature maps: the faster layout for the
# convolutions of oneDNN (CPU) and cuDNN; the same results (atss extension).
_C.MODEL.CHANNELS_LAST = True
# CPU only: fp32 3x3 stride-1 convolutions on large feature maps (the ATSS head
# at P3/P4, the FPN's P3/P4 outputs, ResNet stages 3-4 at 800 x 1216) run through
# NNPACK's Winograd kernels when the PyTorch build has NNPACK and the CPU runs it
# (1.3-1.8x faster on those layers; rounding about 1e-4 relative per layer
# instead of 1.5e-5).
# False: every convolution is F.conv2d (atss extension; see atss_core/layers/conv.py).
_C.MODEL.WINOGRAD = True

# --------------------------------------------------------------------------- #
# Input
# --------------------------------------------------------------------------- #
_C.INPUT = CN()
# Shorter side during training; one is chosen at random per image.
_C.INPUT.MIN_SIZE_TRAIN = (800,)
# (lo, hi): shorter side drawn uniformly from [lo, hi]; (-1, -1) disables it.
_C.INPUT.MIN_SIZE_RANGE_TRAIN = (-1, -1)
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# Per-channel mean / std, in the channel order of the network input (BGR when
# TO_BGR255 is True, as for Caffe2/MSRA-pretrained backbones).
_C.INPUT.PIXEL_MEAN = [102.9801, 115.9465, 122.7717]
_C.INPUT.PIXEL_STD = [1.0, 1.0, 1.0]
_C.INPUT.TO_BGR255 = True
# atss extension: probability of a horizontal flip during training.
_C.INPUT.HORIZONTAL_FLIP_PROB_TRAIN = 0.5

# --------------------------------------------------------------------------- #
# Datasets (names of atss_core/config/paths_catalog.py)
# --------------------------------------------------------------------------- #
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.TEST = ()

# --------------------------------------------------------------------------- #
# Data loader
# --------------------------------------------------------------------------- #
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# Batches are zero-padded at the bottom/right to a multiple of this.
_C.DATALOADER.SIZE_DIVISIBILITY = 0
# Batch portrait images with portrait images and landscape with landscape.
_C.DATALOADER.ASPECT_RATIO_GROUPING = True

# --------------------------------------------------------------------------- #
# Backbone
# --------------------------------------------------------------------------- #
_C.MODEL.BACKBONE = CN()
# One of atss_core.modeling.backbone.resnet.STAGE_SPECS, e.g. "R-50-FPN-RETINANET".
_C.MODEL.BACKBONE.CONV_BODY = "R-50-C4"
# Stages below this index (0 = stem, 1 = res2, ...) get no gradient.
_C.MODEL.BACKBONE.FREEZE_CONV_BODY_AT = 2
_C.MODEL.BACKBONE.USE_GN = False

_C.MODEL.FPN = CN()
_C.MODEL.FPN.USE_GN = False
_C.MODEL.FPN.USE_RELU = False

_C.MODEL.GROUP_NORM = CN()
_C.MODEL.GROUP_NORM.DIM_PER_GP = -1
_C.MODEL.GROUP_NORM.NUM_GROUPS = 32
_C.MODEL.GROUP_NORM.EPSILON = 1e-5

# --------------------------------------------------------------------------- #
# ResNet / ResNeXt
# --------------------------------------------------------------------------- #
_C.MODEL.RESNETS = CN()
# 1 => ResNet; > 1 => ResNeXt (NUM_GROUPS x WIDTH_PER_GROUP, e.g. 32x8d).
_C.MODEL.RESNETS.NUM_GROUPS = 1
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# True for the original MSRA ResNets (stride in the first 1x1 conv); False for
# the FAIR ResNeXt and torchvision models (stride in the 3x3 conv).
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
# Residual block: BottleneckWithFixedBatchNorm, BottleneckWithGN, or (atss
# extension, for ResNet-18/34) BasicBlockWithFixedBatchNorm.
_C.MODEL.RESNETS.TRANS_FUNC = "BottleneckWithFixedBatchNorm"
_C.MODEL.RESNETS.STEM_FUNC = "StemWithFixedBatchNorm"
_C.MODEL.RESNETS.RES5_DILATION = 1
# Output channels of FPN (the name is the reference's).
_C.MODEL.RESNETS.BACKBONE_OUT_CHANNELS = 256 * 4
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# Deformable convolution (DCNv2) per stage res2..res5.
_C.MODEL.RESNETS.STAGE_WITH_DCN = (False, False, False, False)
_C.MODEL.RESNETS.WITH_MODULATED_DCN = False
_C.MODEL.RESNETS.DEFORMABLE_GROUPS = 1

# --------------------------------------------------------------------------- #
# RetinaNet options that the ATSS backbone reads
# --------------------------------------------------------------------------- #
_C.MODEL.RETINANET = CN()
# P6 from C5 (True) or from P5 (False, as in all ATSS configs).
_C.MODEL.RETINANET.USE_C5 = True

# --------------------------------------------------------------------------- #
# ATSS
# --------------------------------------------------------------------------- #
_C.MODEL.ATSS = CN()
# Number of classes including the background.
_C.MODEL.ATSS.NUM_CLASSES = 81
# Anchors: one size per FPN level (8 x stride in the paper).
_C.MODEL.ATSS.ANCHOR_SIZES = (64, 128, 256, 512, 1024)
_C.MODEL.ATSS.ASPECT_RATIOS = (1.0,)
_C.MODEL.ATSS.ANCHOR_STRIDES = (8, 16, 32, 64, 128)
_C.MODEL.ATSS.STRADDLE_THRESH = 0
_C.MODEL.ATSS.OCTAVE = 2.0
_C.MODEL.ATSS.SCALES_PER_OCTAVE = 1
# Head
_C.MODEL.ATSS.NUM_CONVS = 4
_C.MODEL.ATSS.USE_DCN_IN_TOWER = False
# Focal loss
_C.MODEL.ATSS.LOSS_ALPHA = 0.25
_C.MODEL.ATSS.LOSS_GAMMA = 2.0
# Sample selection: ATSS (the paper), SSC (FCOS scale ranges), IoU (RetinaNet
# thresholds), TOPK.
_C.MODEL.ATSS.POSITIVE_TYPE = "ATSS"
_C.MODEL.ATSS.FG_IOU_THRESHOLD = 0.5
_C.MODEL.ATSS.BG_IOU_THRESHOLD = 0.4
# Candidates per level and per ground-truth box.
_C.MODEL.ATSS.TOPK = 9
# Regress from a box ("BOX") or from a point ("POINT").
_C.MODEL.ATSS.REGRESSION_TYPE = "BOX"
_C.MODEL.ATSS.REG_LOSS_WEIGHT = 2.0
# Inference
_C.MODEL.ATSS.PRIOR_PROB = 0.01
_C.MODEL.ATSS.INFERENCE_TH = 0.05
_C.MODEL.ATSS.NMS_TH = 0.6
_C.MODEL.ATSS.PRE_NMS_TOP_N = 1000

# --------------------------------------------------------------------------- #
# Solver
# --------------------------------------------------------------------------- #
_C.SOLVER = CN()
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
_C.SOLVER.BIAS_LR_FACTOR = 2
_C.SOLVER.DCONV_OFFSETS_LR_FACTOR = 1.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.WEIGHT_DECAY = 0.0005
_C.SOLVER.WEIGHT_DECAY_BIAS = 0
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
_C.SOLVER.WARMUP_FACTOR = 1.0 / 3
_C.SOLVER.WARMUP_ITERS = 500
# "constant" or "linear".
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.CHECKPOINT_PERIOD = 2500
# Total over all processes: 16 images on 8 GPUs is 2 per GPU.
_C.SOLVER.IMS_PER_BATCH = 16
# atss extension: "none", "fp16" or "bf16" autocast during training (GPU).
_C.SOLVER.MIXED_PRECISION = "none"
# atss extension: iterations between log lines.
_C.SOLVER.LOG_PERIOD = 20

# --------------------------------------------------------------------------- #
# Test
# --------------------------------------------------------------------------- #
_C.TEST = CN()
_C.TEST.EXPECTED_RESULTS = []
_C.TEST.EXPECTED_RESULTS_SIGMA_TOL = 4
# Total over all processes.
_C.TEST.IMS_PER_BATCH = 8
_C.TEST.DETECTIONS_PER_IMG = 100
# Inference under autocast: "none" (fp32, the reference), "bf16" (CPU or GPU) or
# "fp16" (GPU). The post-processing runs in fp32 either way. What bf16 costs in
# AP is measured in docs/EVALUATION.md (atss extension).
_C.TEST.MIXED_PRECISION = "none"
# atss extension: evaluate on DATASETS.TEST every this many training iterations
# (0 = only at the end of training).
_C.TEST.EVAL_PERIOD = 0

# Test-time augmentation (the paper's multi-scale testing).
_C.TEST.BBOX_AUG = CN()
_C.TEST.BBOX_AUG.ENABLED = False
_C.TEST.BBOX_AUG.H_FLIP = False
_C.TEST.BBOX_AUG.SCALES = ()
_C.TEST.BBOX_AUG.MAX_SIZE = 4000
_C.TEST.BBOX_AUG.SCALE_H_FLIP = False
_C.TEST.BBOX_AUG.VOTE = False
_C.TEST.BBOX_AUG.VOTE_TH = 0.66
_C.TEST.BBOX_AUG.SCALE_RANGES = ()
_C.TEST.BBOX_AUG.MERGE_TYPE = "vote"

# --------------------------------------------------------------------------- #
# Misc
# --------------------------------------------------------------------------- #
# Empty: the tools choose training_dir/<config name> (see atss_core/engine/defaults.py).
_C.OUTPUT_DIR = ""
_C.PATHS_CATALOG = os.path.join(os.path.dirname(__file__), "paths_catalog.py")

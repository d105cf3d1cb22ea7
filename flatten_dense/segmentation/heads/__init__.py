"""Segmentation decode heads: Semantic FPN, UperNet, FCN auxiliary head."""

from flatten_dense.segmentation.heads.conv_module import ConvModule, build_norm
from flatten_dense.segmentation.heads.fcn_head import FCNHead
from flatten_dense.segmentation.heads.fpn import FPN
from flatten_dense.segmentation.heads.semantic_fpn import SemanticFPNHead
from flatten_dense.segmentation.heads.upernet import UPerHead

__all__ = ["FPN", "ConvModule", "FCNHead", "SemanticFPNHead", "UPerHead", "build_norm"]

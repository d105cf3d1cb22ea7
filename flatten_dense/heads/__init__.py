"""Segmentation decode heads: Semantic FPN, UperNet, FCN auxiliary head."""

from flatten_dense.heads.conv_module import ConvModule, build_norm
from flatten_dense.heads.fcn_head import FCNHead
from flatten_dense.heads.semantic_fpn import SemanticFPNHead
from flatten_dense.heads.upernet import UPerHead

__all__ = ["ConvModule", "FCNHead", "SemanticFPNHead", "UPerHead", "build_norm"]

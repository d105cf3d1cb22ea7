"""Necks that turn a backbone's maps into a feature pyramid."""

from .backbone_with_fpn import BackboneWithFPN

__all__ = ["BackboneWithFPN"]

"""Imaging: safe download, scan readers, tissue detection and tiling."""

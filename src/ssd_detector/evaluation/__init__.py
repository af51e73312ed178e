"""Evaluation: PASCAL VOC mean average precision."""

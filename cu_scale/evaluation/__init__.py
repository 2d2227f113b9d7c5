"""Scores: R@IoU and mIoU, and the predictions file format. numpy only."""

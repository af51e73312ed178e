"""SSD: base networks, anchors, targets, loss, detection head and export."""

"""Semantic segmentation (the paper's §6.3): LR-ASPP on a MobileNetV3 backbone, a class per pixel.

So far the network (`network`: torchvision's `lraspp_mobilenet_v3_large` layout, Large and Small,
full or reduced tail). The task registers its `TaskSpec` once its outputs, figures and snippets
exist (issue 25), so no format offers a half-built segmentation export meanwhile."""
